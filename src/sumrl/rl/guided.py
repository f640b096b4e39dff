"""Guided RL (RLGF, Chang et al. 2023, "Learning to Generate Better Than Your LLM").

A guide model (any model sumrl loads: the SFT model, a larger packaged model...) interacts with the
policy's episodes in two ways:

* **roll-in** (PPO++): with probability ``beta`` an episode starts from a prefix written by the
  guide (a random number of tokens, 1 .. max_new_tokens - 1). The prefix becomes part of the
  policy's *state*; the policy continues from it and only its own tokens are trained. This gives
  PPO more (and better) start states than the policy would reach alone.
* **roll-out** (AggreVaTeD): the policy writes up to a random step ``t`` (its action ``a_t`` is
  the last one it takes), the guide completes the summary, and the reward of that completed
  summary is the return after ``a_t``: the policy's episode ends at ``a_t`` with the guide's
  completed return as terminal reward, so the advantage of ``a_t`` is ``Q^guide(s_t, a_t) -
  V(s_t)`` (earlier tokens get it through GAE).
* **D2LOLS** (our reading of the paper's combination): each episode independently gets a guide
  roll-in with probability ``beta`` and a guide roll-out with probability ``alpha``; episodes
  without a roll-out are finished by the policy (a mixed roll-out policy, as in LOLS).

Different tokenizers: the policy and the guide exchange *text*, never token ids. The guide sees
its own prompt (its chat template, the document truncated to the same budget in its tokens)
followed by the summary-so-far as text; what it writes is decoded and re-tokenised by the policy
tokenizer. Token budgets are counted in the policy's tokens (the guide's continuation is cut to
the remaining policy budget after re-tokenisation; a cut continuation counts as unfinished).

Departures from the paper: the guide's return is the Monte-Carlo return of *one* guide roll-out
(the paper's AggreVaTeD also uses a single roll-out per sampled step); the critic is trained on
the mixture of roll-in / roll-out distributions rather than a separate guide value function; the
roll-in length is uniform over the generation budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from sumrl.rl.rollout import encode_prompt_ids, sample, truncate_at_eos


@dataclass
class Guide:
    model: Any
    tokenizer: Any
    stop_ids: list[int]
    pad_id: int
    max_prompt_tokens: int
    instruction: str | None = None
    temperature: float = 0.7
    _prompts: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: str, *, max_prompt_tokens: int, instruction: str | None, temperature: float,
             dtype: str = "float32") -> "Guide":
        from sumrl.generation.summarize import eos_ids
        from sumrl.models.loading import load_model

        model, tok = load_model(spec, dtype=dtype)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model=model, tokenizer=tok, stop_ids=eos_ids(model, tok), pad_id=tok.pad_token_id,
                   max_prompt_tokens=max_prompt_tokens, instruction=instruction, temperature=temperature)

    def prompt_ids(self, example_index: int, example: Any) -> list[int]:
        if example_index not in self._prompts:
            self._prompts[example_index] = encode_prompt_ids(self.tokenizer, example.document, example.query,
                                                             max_prompt_tokens=self.max_prompt_tokens,
                                                             instruction=self.instruction)
        return self._prompts[example_index]

    def continue_texts(self, prompts: Sequence[list[int]], prefixes: Sequence[str],
                       max_new_tokens: Sequence[int]) -> list[tuple[str, bool]]:
        """The guide continues each ``prompt + prefix text``; returns ``(continuation text,
        ended_with_end_token)`` per row (at most ``max_new_tokens[i]`` guide tokens)."""
        if not prompts:
            return []
        inputs = []
        for p, text in zip(prompts, prefixes):
            extra = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            inputs.append(list(p) + list(extra))
        outs = sample(self.model, inputs, max_new_tokens=[max(1, int(m)) for m in max_new_tokens],
                      temperature=self.temperature, top_p=1.0, stop_ids=self.stop_ids, pad_id=self.pad_id)
        res = []
        for toks in outs:
            acts, fin = truncate_at_eos(toks, self.stop_ids)
            body = acts[:-1] if fin else acts
            res.append((self.tokenizer.decode(body, skip_special_tokens=True), fin))
        return res


def rollin_prefixes(guide: Guide, policy_tok: Any, items: Sequence[tuple[int, Any]], lengths: Sequence[int],
                    *, max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """PPO++ roll-in: for each ``(example_index, example)`` the guide writes ``lengths[i]`` tokens;
    returns ``(prefix ids in the policy's vocabulary, guide ended the summary)``. The prefix is
    capped at ``max_new_tokens - 1`` policy tokens so the policy always has at least one action."""
    conts = guide.continue_texts([guide.prompt_ids(i, ex) for i, ex in items], [""] * len(items), lengths)
    out = []
    for text, fin in conts:
        ids = policy_tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_new_tokens - 1:
            ids, fin = ids[: max_new_tokens - 1], False
        out.append(([int(x) for x in ids], fin))
    return out


def rollout_completions(guide: Guide, policy_tok: Any, items: Sequence[tuple[int, Any]], summaries_so_far: Sequence[list[int]],
                        budgets: Sequence[int]) -> list[tuple[list[int], bool]]:
    """AggreVaTeD roll-out: the guide completes each summary-so-far (policy token ids, decoded to
    text); returns ``(continuation ids in the policy's vocabulary, guide ended the summary)``,
    the continuation cut to ``budgets[i]`` policy tokens (a cut continuation is unfinished)."""
    texts = [policy_tok.decode(s, skip_special_tokens=True) for s in summaries_so_far]
    conts = guide.continue_texts([guide.prompt_ids(i, ex) for i, ex in items], texts, budgets)
    out = []
    for (text, fin), so_far, budget in zip(conts, texts, budgets):
        # Re-tokenise the continuation in the context of the text before it would merge tokens across
        # the boundary and change the policy's own actions; tokenising it alone keeps them intact.
        ids = policy_tok(text, add_special_tokens=False)["input_ids"] if text else []
        if len(ids) > budget:
            ids, fin = ids[:budget], False
        out.append(([int(x) for x in ids], fin))
    return out


def sample_guided_plan(n: int, *, rollin_prob: float, rollout_prob: float, max_new_tokens: int,
                       generator: torch.Generator) -> list[dict]:
    """Per episode: whether the guide rolls in (and how many tokens) and whether it rolls out.
    The roll-out step is drawn later, once the roll-in length (in policy tokens) is known."""
    plan = []
    for _ in range(n):
        u = torch.rand(3, generator=generator).tolist()
        rollin = u[0] < rollin_prob
        plan.append({
            "rollin": rollin,
            "rollin_len": 1 + int(u[1] * (max_new_tokens - 1)) if rollin else 0,  # 1 .. max_new_tokens - 1
            "rollout": u[2] < rollout_prob,
        })
    return plan
