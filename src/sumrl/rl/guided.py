"""Rollout strategies: how the episodes of one outer step are produced. Chosen once from the config
(:func:`make_rollout_plan`); the plain PPO / GRPO path is :class:`PolicySampling` and carries no
guide branch.

* :class:`PolicySampling` -- ``G`` samples of the policy per prompt;
* :class:`ReferenceTrajectories` -- the reference summaries as trajectories (the last-mile
  recipe's "half of the outer batches"); over-long references are left out, never cut;
* guided RL (RLGF, Chang et al. 2023, "Learning to Generate Better Than Your LLM"; reference code:
  the TRIL repository, ``src/tril/algorithms/{ppo_pp,aggrevated,lols,d2lols}.py`` and
  ``src/tril/utils/logit_processors.py``):

  - :class:`GuideRollin` (**PPO++**): with probability ``beta`` an episode starts from a prefix
    of the guide's *own realised* sample: the guide writes a whole summary of length ``L``, the
    switch point ``k`` is uniform in ``1 .. L-1`` (strictly mid-summary; no roll-in when
    ``L < 2``), and the policy continues from ``k``. TRIL: ``RollinProcessor.create_mask``
    draws a row of ``tril(ones)[: length - 1]``, i.e. ``k`` uniform in ``1 .. length-1``, for a
    ``beta`` fraction of rows. The prefix is state; only the policy's tokens are trained.
  - :class:`GuideRollout` (**AggreVaTeD**): the policy samples a whole summary of length ``L``;
    with probability ``beta`` a step ``k`` is drawn uniformly in ``1 .. L-1``, the policy keeps
    its first ``k`` tokens (the actions that get the credit) and the guide completes the summary
    from there. The completion is part of the trajectory: GAE runs through it and the critic is
    trained on its positions (TRIL ``ppo.py``: ``value_masks = ~rollin_masks`` when
    ``curr_alg_type == "aggrevate"``), so the advantage of the policy's tokens is measured against
    the guide's value. Rows not selected (probability ``1 - beta``, or ``L < 2``) are, as in TRIL,
    written by the guide alone: they train the critic only.
  - **D2LOLS** (:class:`D2LOLSSchedule`): TRIL's schedule -- AggreVaTeD with a separate guide
    critic for the first ``tau`` outer steps, then PPO++ with the policy's critic; the switch is
    for the whole batch (TRIL ``d2lols.py``: ``value_fn = "policy" if iteration >= tau else
    "guide"``), never a per-episode mix.

Different tokenizers: the policy and the guide exchange *text*, never token ids. The guide sees
its own prompt (its chat template, the document truncated to the same budget in its tokens)
followed by the summary-so-far as text; what it writes is decoded and re-tokenised by the policy
tokenizer. Token budgets and the switch point ``k`` are counted in the policy's tokens.

Randomness: every decision (who rolls in, where ``k`` falls) comes from a generator seeded by the
run seed and the step, so a resumed run makes the same decisions; sampling itself uses torch's
global generator, saved in checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from sumrl.errors import SumrlError
from sumrl.generation.engine import sample
from sumrl.rl.rollout import encode_prompt_ids, make_episode, reference_actions, truncate_at_eos
from sumrl.rl.trajectory import Episode, Rollout, collate


# ------------------------------------------------------------------------------------- the guide
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
                      temperature=self.temperature, top_p=1.0, stop_ids=self.stop_ids, pad_id=self.pad_id,
                      prefix_lens=[len(i) - len(p) for i, p in zip(inputs, prompts)])
        res = []
        for toks in outs:
            acts, fin = truncate_at_eos(toks, self.stop_ids)
            body = acts[:-1] if fin else acts
            res.append((self.tokenizer.decode(body, skip_special_tokens=True), fin))
        return res


def guide_write(guide: Guide, policy_tok: Any, items: Sequence[tuple[int, Any]], so_far: Sequence[Sequence[int]],
                budgets: Sequence[int]) -> list[tuple[list[int], bool]]:
    """The guide writes (from scratch, or continuing ``so_far`` policy tokens decoded to text);
    returns ``(new ids in the policy's vocabulary, guide ended the summary)`` per row, cut to
    ``budgets[i]`` policy tokens (a cut continuation is unfinished).

    The continuation is tokenised on its own: re-tokenising it together with the text before it
    could merge tokens across the boundary and change the policy's own actions."""
    texts = [policy_tok.decode(list(s), skip_special_tokens=True) if s else "" for s in so_far]
    conts = guide.continue_texts([guide.prompt_ids(i, ex) for i, ex in items], texts, budgets)
    out = []
    for (text, fin), budget in zip(conts, budgets):
        ids = [int(x) for x in policy_tok(text, add_special_tokens=False)["input_ids"]] if text else []
        if len(ids) > budget:
            ids, fin = ids[:budget], False
        out.append((ids, fin))
    return out


def switch_point(length: int, generator: torch.Generator) -> int | None:
    """TRIL's switch point inside a realised sequence of ``length`` tokens: ``k`` uniform in
    ``1 .. length-1`` (both sides non-empty), ``None`` when ``length < 2``."""
    if length < 2:
        return None
    return 1 + int(torch.randint(0, length - 1, (1,), generator=generator))


# ------------------------------------------------------------------------------------ strategies
@dataclass
class RolloutContext:
    """What every strategy needs from the trainer (models, tokens, budgets); no trainer methods."""

    policy: Any  # the model that samples (LoRA adapters on)
    tokenizer: Any
    prompt_ids: Callable[[int, Any], list[int]]
    stop_ids: list[int]
    pad_id: int
    eos_id: int
    max_new_tokens: int
    temperature: float
    top_p: float
    group_size: int
    guide: Guide | None = None
    share_prompt: bool = False  # prefill each prompt once per group (sumrl.generation.sampler.sample_groups)
    merge_lora: bool = False  # sample with the LoRA weights merged (restored exactly afterwards)
    engine: Any = None  # the rollout engine (sumrl.generation.engine); None: HFEngine(policy, share_prompt, merge_lora)


def _policy_sample(ctx: RolloutContext, prompts: list[list[int]], limits: list[int],
                   prefix_lens: list[int] | None = None) -> list[tuple[list[int], bool]]:
    """``(actions, finished)`` per prompt, sampled by the rollout engine (the one seam of policy
    generation, :mod:`sumrl.generation.engine`). With ``share_prompt`` the HF engine prefills
    consecutive identical prompts (a group) once and drops finished rows; the tokens follow the
    same distribution as ``generation.engine.sample`` (tested equal under greedy decoding). ``prefix_lens``:
    trailing prompt tokens that are a guide roll-in (decoder input of an encoder-decoder)."""
    from sumrl.generation.engine import HFEngine, Sampling

    engine = ctx.engine or HFEngine(ctx.policy, share_prompt=ctx.share_prompt, merge_lora=ctx.merge_lora)
    sampling = Sampling(temperature=ctx.temperature, top_p=ctx.top_p, stop_ids=tuple(ctx.stop_ids), pad_id=ctx.pad_id)
    if prefix_lens is not None and any(prefix_lens):  # only then: an engine without roll-ins still serves PPO/GRPO
        raw = engine.generate(prompts, limits, sampling, prefix_lens=prefix_lens)
    else:
        raw = engine.generate(prompts, limits, sampling)
    return [truncate_at_eos(r, ctx.stop_ids) for r in raw]


def _slots(example_indices: Sequence[int], G: int) -> list[tuple[int, int]]:
    """``(example index, group)`` per episode, ``G`` contiguous episodes per prompt (the order the
    group baselines expect)."""
    return [(ei, g) for g, ei in enumerate(example_indices) for _ in range(G)]


@dataclass
class PolicySampling:
    """``G`` samples of the policy per prompt."""

    name: str = "policy"

    def collect(self, ctx: RolloutContext, example_indices: Sequence[int], examples: Sequence[Any],
                generator: torch.Generator, timings: dict) -> Rollout:
        slots = _slots(example_indices, ctx.group_size)
        prompts = [ctx.prompt_ids(ei, examples[ei]) for ei, _ in slots]
        t0 = time.perf_counter()
        cut = _policy_sample(ctx, prompts, [ctx.max_new_tokens] * len(slots))
        timings["time/generate_policy"] = time.perf_counter() - t0
        eps = [make_episode(ctx.tokenizer, example_index=ei, group=g, prompt_ids=p, actions=a, finished=f)
               for (ei, g), p, (a, f) in zip(slots, prompts, cut)]
        return collate(eps, ctx.pad_id)


@dataclass
class ReferenceTrajectories:
    """The reference summaries of the step's prompts as trajectories (always finished: reference
    tokens + the end token). The step's prompts are drawn from those whose reference fits the
    output cap (the trainer's reference sampler). For GRPO / RLOO the reference replaces the first
    sample of each group and the others are sampled, so the group baseline still compares
    completions of one prompt."""

    name: str = "reference"

    def collect(self, ctx: RolloutContext, example_indices: Sequence[int], examples: Sequence[Any],
                generator: torch.Generator, timings: dict, *, group_algo: bool = False) -> Rollout:
        slots = _slots(example_indices, ctx.group_size)
        episodes: list[Episode | None] = [None] * len(slots)
        todo = []
        for k, (ei, g) in enumerate(slots):
            if group_algo and k % ctx.group_size != 0:
                todo.append(k)
                continue
            ex = examples[ei]
            acts = reference_actions(ctx.tokenizer, ex.reference, max_new_tokens=ctx.max_new_tokens,
                                     eos_id=ctx.eos_id) if ex.references else None
            if acts is None:
                raise SumrlError(f"example {ex.id}: its reference does not fit --max-new-tokens "
                                 f"{ctx.max_new_tokens} (with the end token); it should not be in a reference batch")
            episodes[k] = make_episode(ctx.tokenizer, example_index=ei, group=g, prompt_ids=ctx.prompt_ids(ei, ex),
                                       actions=acts, finished=True, source="reference")
        if todo:
            prompts = [ctx.prompt_ids(slots[k][0], examples[slots[k][0]]) for k in todo]
            t0 = time.perf_counter()
            cut = _policy_sample(ctx, prompts, [ctx.max_new_tokens] * len(todo))
            timings["time/generate_policy"] = time.perf_counter() - t0
            for k, p, (a, f) in zip(todo, prompts, cut):
                ei, g = slots[k]
                episodes[k] = make_episode(ctx.tokenizer, example_index=ei, group=g, prompt_ids=p, actions=a,
                                           finished=f)
        return collate([e for e in episodes if e is not None], ctx.pad_id, kind="reference")


@dataclass
class GuideRollin:
    """PPO++: with probability ``beta`` the guide's own sample up to a uniform ``k`` in ``1..L-1``
    becomes the start state and the policy continues from there."""

    beta: float
    name: str = "ppo++"
    critic: str = "policy"

    def collect(self, ctx: RolloutContext, example_indices: Sequence[int], examples: Sequence[Any],
                generator: torch.Generator, timings: dict) -> Rollout:
        if ctx.guide is None:
            raise SumrlError("PPO++ needs a guide model")
        slots = _slots(example_indices, ctx.group_size)
        chosen = [n for n in range(len(slots)) if float(torch.rand(1, generator=generator)) < self.beta]
        prefixes: dict[int, list[int]] = {}
        t0 = time.perf_counter()
        if chosen:
            # the guide's whole sample (same budget as the policy's), then the switch point inside it
            written = guide_write(ctx.guide, ctx.tokenizer, [(slots[n][0], examples[slots[n][0]]) for n in chosen],
                                  [[] for _ in chosen], [ctx.max_new_tokens] * len(chosen))
            for n, (ids, _fin) in zip(chosen, written):
                k = switch_point(len(ids), generator)
                if k is not None:
                    prefixes[n] = ids[:k]
        timings["time/generate_guide"] = time.perf_counter() - t0
        prompts = [ctx.prompt_ids(ei, examples[ei]) + prefixes.get(n, []) for n, (ei, _) in enumerate(slots)]
        limits = [ctx.max_new_tokens - len(prefixes.get(n, [])) for n in range(len(slots))]
        t0 = time.perf_counter()
        cut = _policy_sample(ctx, prompts, limits, prefix_lens=[len(prefixes.get(n, [])) for n in range(len(slots))])
        timings["time/generate_policy"] = time.perf_counter() - t0
        eps = []
        for n, ((ei, g), p, (a, f)) in enumerate(zip(slots, prompts, cut)):
            pre = prefixes.get(n, [])
            eps.append(make_episode(ctx.tokenizer, example_index=ei, group=g, prompt_ids=p, actions=a, finished=f,
                                    prefix_ids=pre, source="guide-rollin" if pre else "policy"))
        return collate(eps, ctx.pad_id, critic=self.critic)


@dataclass
class GuideRollout:
    """AggreVaTeD: the policy's whole sample, its first ``k`` tokens kept (``k`` uniform in
    ``1..L-1``), the guide completes; rows not selected are written by the guide alone."""

    beta: float
    name: str = "aggrevated"
    critic: str = "policy"

    def collect(self, ctx: RolloutContext, example_indices: Sequence[int], examples: Sequence[Any],
                generator: torch.Generator, timings: dict) -> Rollout:
        if ctx.guide is None:
            raise SumrlError("AggreVaTeD needs a guide model")
        slots = _slots(example_indices, ctx.group_size)
        prompts = [ctx.prompt_ids(ei, examples[ei]) for ei, _ in slots]
        t0 = time.perf_counter()
        cut = _policy_sample(ctx, prompts, [ctx.max_new_tokens] * len(slots))
        timings["time/generate_policy"] = time.perf_counter() - t0
        kept: list[list[int]] = []
        for (a, f) in cut:
            body = a[:-1] if f else a  # the realised summary, without its end token
            k = switch_point(len(body), generator) if float(torch.rand(1, generator=generator)) < self.beta else None
            kept.append(body[:k] if k is not None else [])
        t0 = time.perf_counter()
        written = guide_write(ctx.guide, ctx.tokenizer, [(ei, examples[ei]) for ei, _ in slots], kept,
                              [ctx.max_new_tokens - len(k) for k in kept])
        timings["time/generate_guide"] = time.perf_counter() - t0
        eps = []
        for (ei, g), p, acts, (suf, fin) in zip(slots, prompts, kept, written):
            eps.append(make_episode(ctx.tokenizer, example_index=ei, group=g, prompt_ids=p, actions=acts,
                                    finished=False, suffix_ids=suf, suffix_finished=fin,
                                    source="guide-rollout" if acts else "guide"))
        return collate(eps, ctx.pad_id, critic=self.critic, value_on="suffix")


@dataclass
class D2LOLSSchedule:
    """TRIL's D2LOLS: AggreVaTeD with the guide critic before step ``tau``, PPO++ from then on."""

    rollout: GuideRollout
    rollin: GuideRollin
    tau: int
    name: str = "d2lols"

    def for_step(self, step: int):
        return self.rollout if step < self.tau else self.rollin


# -------------------------------------------------------------------------------------- the plan
@dataclass
class RolloutPlan:
    """Which strategy produces step ``step``'s episodes. Reference steps are exact, not a coin
    flip: step ``s`` (0-based) is a reference step iff ``floor((s+1)*ratio) > floor(s*ratio)``,
    so ratio 0.5 alternates sampled, reference, sampled, ... (the first step is sampled whenever
    ratio < 1), deterministic and unchanged by a resume."""

    main: Any
    reference_ratio: float = 0.0
    group_algo: bool = False

    def reference_steps_before(self, step: int) -> int:
        """How many of steps ``0 .. step-1`` are reference steps: ``floor(step * ratio)``."""
        return int(step * self.reference_ratio + 1e-9)

    def is_reference_step(self, step: int) -> bool:
        return self.reference_steps_before(step + 1) > self.reference_steps_before(step)

    def strategy(self, step: int):
        if self.is_reference_step(step):
            return ReferenceTrajectories()
        return self.main.for_step(step) if isinstance(self.main, D2LOLSSchedule) else self.main

    def collect(self, step: int, ctx: RolloutContext, example_indices: Sequence[int], examples: Sequence[Any],
                generator: torch.Generator, timings: dict) -> Rollout:
        st = self.strategy(step)
        if isinstance(st, ReferenceTrajectories):
            return st.collect(ctx, example_indices, examples, generator, timings, group_algo=self.group_algo)
        return st.collect(ctx, example_indices, examples, generator, timings)


def make_rollout_plan(cfg: Any) -> RolloutPlan:
    """The plan for ``cfg.algo`` (``RLConfig``), chosen once."""
    from sumrl.rl.config import GROUP_ALGOS

    if cfg.algo == "ppo++":
        main: Any = GuideRollin(beta=cfg.rollin_prob)
    elif cfg.algo == "aggrevated":
        main = GuideRollout(beta=cfg.rollout_prob)
    elif cfg.algo == "d2lols":
        main = D2LOLSSchedule(rollout=GuideRollout(beta=cfg.rollout_prob, critic="guide"),
                              rollin=GuideRollin(beta=cfg.rollin_prob), tau=cfg.tau)
    else:
        main = PolicySampling()
    return RolloutPlan(main=main, reference_ratio=cfg.reference_trajectory_ratio,
                       group_algo=cfg.algo in GROUP_ALGOS)
