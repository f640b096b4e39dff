"""Reward models: token-level scalar heads on MiniLM or on a LoRA-adapted policy-family LM (the
model, its saved folder and the reward wrapper; training is :mod:`sumrl.training.rm`).

Model
-----
The RM reads (document, summary[, query]) and outputs one value per *summary token*; the
sequence score is the mean of those values (the last-mile paper's token-level reward model).

* ``backbone="minilm"`` (default, fast on CPU): all-MiniLM-L6-v2 as a cross-encoder over the
  sentence pair (query + document prefix, summary). Truncation rule: the summary keeps its first
  ``max_summary_tokens`` word pieces; the document (after the query, when there is one) gets
  the rest of ``max_length`` and keeps its *beginning* (``truncation="only_first"``). Only the
  top ``train_layers`` transformer layers and the head are trained (-1 = all layers).
* ``backbone="policy"``: a causal LM (``--model``, any sumrl model spec) with LoRA adapters and
  a scalar head on the last hidden states; input ``"Document:\\n{doc}\\n\\nSummary:\\n{summary}"``
  the summary keeps its first ``max_summary_tokens`` tokens and the document a *fixed* budget
  (``max_length - max_summary_tokens`` minus the prompt words), so a summary token's value sees
  the document prefix and the summary up to that token, and appending tokens never changes the
  values before them: this RM is causal (MiniLM is bidirectional). ``lora_layers`` puts the LoRA
  on the top N layers only.

Per-token rewards for RL (:class:`RewardModelReward` with ``per_token``): each policy token gets
the RM's value at that token (:func:`map_token_values`), normalised with the mean/std of token
values on held-out references; the sequence score is then 0. Only causal RMs are accepted.

Saved folder: ``config.json`` (architecture, training config, normalisation), ``model.safetensors``
(only the trained tensors: head + trained layers, or head + LoRA), ``metrics.json``.
Normalisation: ``normalization`` = mean/std of the RM's sequence scores on reference summaries
(synthetic RM: held-out ``val`` references; preference RM: the training pairs' summaries), so RL
can use ``(score - mean) / std``; ``token_normalization`` (synthetic RM) = mean/std of the
individual token values on the same references, for the per-token reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from sumrl.errors import ConfigError, DataError, SumrlError
from sumrl.rewards.base import RewardInput, RewardOutput

FORMAT = "sumrl-reward-model"


# =========================================================================== model


def map_token_values(policy_spans: Sequence[tuple[int, int]], rm_spans: Sequence[tuple[int, int]],
                     rm_values: Sequence[float]) -> list[float | None]:
    """One value per policy token: the mean of the values of the RM tokens whose characters overlap
    the policy token's characters; None when none does (an empty span -- a special token, or a
    byte that only starts a UTF-8 character -- or text past the RM's summary window).

    With the policy backbone the RM tokenizer is the policy's, so each policy token usually gets
    exactly its own RM value; with another tokenizer a policy token inside a longer RM token gets
    that token's value (not a share of it): a per-token reward is a value per position, not a
    total to be split."""
    out: list[float | None] = []
    for a, b in policy_spans:
        hit = [v for (c, d), v in zip(rm_spans, rm_values) if b > a and d > c and c < b and d > a]
        out.append(sum(hit) / len(hit) if hit else None)
    return out



class RewardModel(torch.nn.Module):
    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = dict(arch)
        self.backbone = arch.get("backbone", "minilm")
        self.max_length = int(arch.get("max_length", 256))
        self.max_summary_tokens = int(arch.get("max_summary_tokens", 128))
        if self.max_summary_tokens > self.max_length - 16:
            raise ConfigError(f"max_summary_tokens ({self.max_summary_tokens}) must be at most max_length - 16 "
                              f"({self.max_length - 16}): the document needs room")
        if self.backbone == "minilm":
            from transformers import AutoModel, AutoTokenizer

            from sumrl.models.encoder import encoder_path

            path = arch.get("encoder_path") or str(encoder_path())
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.encoder = AutoModel.from_pretrained(path)
            if self.max_length > self.encoder.config.max_position_embeddings:
                raise ConfigError(f"max_length {self.max_length} exceeds MiniLM's {self.encoder.config.max_position_embeddings} positions")
            for p in self.encoder.parameters():
                p.requires_grad = False
            layers = self.encoder.encoder.layer
            k = int(arch.get("train_layers", 2))
            for layer in (layers if k < 0 else layers[len(layers) - k:] if k else []):
                for p in layer.parameters():
                    p.requires_grad = True
            hidden = self.encoder.config.hidden_size
        elif self.backbone == "policy":
            from sumrl.models.lora import add_lora, disable_dropout
            from sumrl.models.loading import load_model

            if not arch.get("model"):
                raise ConfigError("--backbone policy needs --model (a policy-family model spec)")
            lm, tok = load_model(arch["model"], load_in_4bit=bool(arch.get("load_in_4bit", False)))
            disable_dropout(lm)
            cfg = getattr(lm.config, "text_config", None) or lm.config
            n_layers = int(cfg.num_hidden_layers)
            k = int(arch.get("lora_layers", -1))
            layers = None if k < 0 or k >= n_layers else list(range(n_layers - k, n_layers))
            if k == 0:
                raise ConfigError("--lora-layers must be -1 (all) or at least 1")
            self.lm = add_lora(lm, r=int(arch.get("lora_r", 8)), alpha=2 * int(arch.get("lora_r", 8)),
                               layers_to_transform=layers)
            self.tokenizer = tok
            from sumrl.models.seq2seq import is_encoder_decoder

            # an encoder-decoder reads the document in its encoder and the summary in its decoder
            self.seq2seq = is_encoder_decoder(lm)
            hidden = cfg.hidden_size
        else:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose minilm or policy")
        # FSDP's transformer wrap policy makes each of these layers its own shard unit
        inner = self.encoder if self.backbone == "minilm" else self.lm.get_base_model()
        self._no_split_modules = list(getattr(inner, "_no_split_modules", None) or []) or None
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.constant_(self.head.bias, 0.5)  # midpoint of the 0/1 token targets

    # ------------------------------------------------------------------ inputs

    def _cut_summary(self, summary: str) -> str:
        enc = self.tokenizer(summary, add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)  # only measuring: long inputs (copy_input negatives) are cut below
        if len(enc["input_ids"]) <= self.max_summary_tokens:
            return summary
        return summary[:enc["offset_mapping"][self.max_summary_tokens - 1][1]]

    def _features(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None]):
        """(batch tensors, summary-token mask (B, T), per-item list of (char span) per summary token)."""
        sums = [self._cut_summary(s or "") for s in summaries]
        # words >= word pieces never holds, but a document longer than max_length *words* can never
        # fit: cutting it first keeps tokenisation of 8k-word documents cheap
        docs = [" ".join((d or "").split()[:self.max_length]) for d in documents]
        firsts = [f"{q}\n\n{d}" if q else d for d, q in zip(docs, queries)]
        if self.backbone == "minilm":
            enc = self.tokenizer(firsts, sums, truncation="only_first", max_length=self.max_length, padding=True,
                                 return_offsets_mapping=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            seq_ids = [enc.sequence_ids(b) for b in range(len(sums))]
            mask = torch.tensor([[sid == 1 for sid in s] for s in seq_ids], dtype=torch.bool)
            spans = [[(int(offsets[b, t, 0]), int(offsets[b, t, 1])) for t in range(mask.shape[1]) if mask[b, t]]
                     for b in range(len(sums))]
            for b in range(len(sums)):
                if not mask[b].any():  # empty summary: score it from the final [SEP]
                    last = int(enc["attention_mask"][b].sum()) - 1
                    mask[b, last] = True
                    spans[b] = [(0, 0)]
            return dict(enc), mask, spans
        tok = self.tokenizer
        rows, masks, spans = [], [], []
        head_ids = tok("Document:\n", add_special_tokens=False)["input_ids"]
        tail_ids = tok("\n\nSummary:\n", add_special_tokens=False)["input_ids"]
        # a fixed document budget (not "whatever the summary leaves"): with a budget that shrinks as
        # the summary grows, appending tokens after position k would cut the document and change
        # the values at positions <= k -- the causal RM would not be causal any more
        budget = max(0, self.max_length - self.max_summary_tokens - len(head_ids) - len(tail_ids))
        if getattr(self, "seq2seq", False):
            return self._seq2seq_features(firsts, sums, head_ids, max(0, self.max_length - len(head_ids)))
        for first, s in zip(firsts, sums):
            se = tok(s, add_special_tokens=False, return_offsets_mapping=True)
            # re-tokenising the cut text can (rarely) merge differently at the cut: keep the window
            s_ids = list(se["input_ids"])[:self.max_summary_tokens]
            d_ids = tok(first, add_special_tokens=False)["input_ids"][:budget]
            ids = head_ids + d_ids + tail_ids + s_ids
            m = [False] * (len(ids) - len(s_ids)) + [True] * len(s_ids)
            sp = [tuple(o) for o in se["offset_mapping"]][:self.max_summary_tokens]
            if not s_ids:  # empty summary: value of the last prompt token
                m[-1] = True
                sp = [(0, 0)]
            rows.append(ids)
            masks.append(m)
            spans.append(sp)
        T = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
        attn = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
        mask = torch.tensor([m + [False] * (T - len(m)) for m in masks], dtype=torch.bool)
        return {"input_ids": input_ids, "attention_mask": attn}, mask, spans

    def _seq2seq_features(self, firsts: Sequence[str], sums: Sequence[str], head_ids: list[int], budget: int):
        """Encoder-decoder inputs: the encoder reads ``Document:\n{doc}`` (the document cut to a fixed
        budget), the decoder ``[start] + summary``; the value of summary token ``k`` is read from the
        decoder state after token ``k`` (position ``k + 1``), so it depends on the document and the
        summary up to ``k`` only (causal, like the decoder RM). Empty summary: the start state."""
        tok = self.tokenizer
        enc_rows, dec_rows, spans = [], [], []
        for first, s in zip(firsts, sums):
            se = tok(s, add_special_tokens=False, return_offsets_mapping=True)
            s_ids = list(se["input_ids"])[:self.max_summary_tokens]
            enc_rows.append(head_ids + tok(first, add_special_tokens=False)["input_ids"][:budget])
            dec_rows.append(s_ids)
            sp = [tuple(o) for o in se["offset_mapping"]][:self.max_summary_tokens]
            spans.append(sp if s_ids else [(0, 0)])
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        L, T = max(len(r) for r in enc_rows), max(len(r) for r in dec_rows) + 1
        input_ids = torch.tensor([r + [pad] * (L - len(r)) for r in enc_rows])
        attn = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in enc_rows])
        # decoder_hidden reads [start] + response[:-1]: one trailing slot makes it read the whole summary
        resp = torch.tensor([r + [pad] * (T - len(r)) for r in dec_rows])
        resp_mask = torch.tensor([[1] * (len(r) + 1) + [0] * (T - len(r) - 1) for r in dec_rows])
        mask = torch.tensor([[False] + [True] * len(r) + [False] * (T - len(r) - 1) if r else [True] + [False] * (T - 1)
                             for r in dec_rows], dtype=torch.bool)
        return {"input_ids": input_ids, "attention_mask": attn, "response_ids": resp, "response_mask": resp_mask}, \
            mask, spans

    @property
    def causal(self) -> bool:
        """True when a summary token's value depends only on the document and the summary up to
        that token (the policy-family decoder); MiniLM attends in both directions."""
        return self.backbone == "policy"

    def summary_ids(self, summary: str) -> list[int]:
        """The summary token ids the RM reads (after the ``max_summary_tokens`` cut): two texts with
        the same ids are the same input to the RM."""
        ids = self.tokenizer(self._cut_summary(summary or ""), add_special_tokens=False, verbose=False)["input_ids"]
        return list(ids)[:self.max_summary_tokens]

    def n_summary_tokens(self, summary: str) -> int:
        """Length of the summary in the RM's tokens, before any cut."""
        return len(self.tokenizer(summary or "", add_special_tokens=False, verbose=False)["input_ids"])

    # ------------------------------------------------------------------ forward

    def device(self) -> torch.device:
        return self.head.weight.device

    def forward_values(self, documents, summaries, queries) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(B, T) token values, (B, T) summary mask, char spans of the summary tokens."""
        batch, mask, spans = self._features(documents, summaries, queries)
        batch = {k: v.to(self.device()) for k, v in batch.items()}
        if self.backbone == "minilm":
            h = self.encoder(**batch).last_hidden_state
        elif getattr(self, "seq2seq", False):
            from sumrl.models.seq2seq import decoder_hidden, encode

            states, emask = encode(self.lm, batch["input_ids"], batch["attention_mask"])
            h = decoder_hidden(self.lm, states, emask, batch["response_ids"], batch["response_mask"])
        else:
            base = self.lm.get_base_model()
            backbone = getattr(base, base.base_model_prefix)  # the transformer without the LM head: no vocab logits
            h = backbone(**batch).last_hidden_state
        values = self.head(h.float()).squeeze(-1)
        return values, mask.to(values.device), spans

    def forward(self, documents, summaries, queries) -> tuple[torch.Tensor, torch.Tensor, list]:
        """:meth:`forward_values` as the module's ``forward``: under ``accelerate launch`` the trained
        module is wrapped (DDP / FSDP), and only a call through the wrapper synchronises gradients."""
        return self.forward_values(documents, summaries, queries)

    @staticmethod
    def sequence_scores(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        return (values * m).sum(1) / m.sum(1).clamp(min=1)

    @torch.inference_mode()
    def score(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None,
              batch_size: int = 16) -> list[float]:
        """Sequence score of each summary (mean of its token values; not normalised)."""
        return [float(v.mean()) if v.numel() else 0.0
                for v in self.token_values(documents, summaries, queries, batch_size=batch_size)]

    @torch.inference_mode()
    def token_values(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None,
                     batch_size: int = 16) -> list[torch.Tensor]:
        """The raw value of every summary token the RM reads, one 1-D tensor per summary."""
        was = self.training
        self.eval()
        queries = list(queries) if queries is not None else [None] * len(summaries)
        out: list[torch.Tensor | None] = [None] * len(summaries)
        # batches of similar summary length: padding every batch to its longest summary would
        # otherwise cost up to twice the compute (each value depends only on its own row)
        order = sorted(range(len(summaries)), key=lambda i: len(summaries[i] or ""))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            # through __call__: under FSDP the root unit's hooks gather its parameters (head, embeddings)
            v, m, _ = self([documents[i] for i in idx], [summaries[i] for i in idx], [queries[i] for i in idx])
            for b, i in enumerate(idx):
                out[i] = v[b][m[b]].float().cpu()
        self.train(was)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def token_scores(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None,
                     tokenizer: Any = None, token_ids: Sequence[Sequence[int]] | None = None,
                     batch_size: int = 16) -> list[dict[str, Any]]:
        """Per summary: ``{"score" (mean token value), "values" (raw value of each RM token),
        "spans" (their char spans in the summary)}`` and, with ``tokenizer`` + ``token_ids`` (the
        policy's), ``"policy_values"``: one raw value or None per policy token
        (:func:`map_token_values`). With ``token_ids`` the RM reads ``decode(token_ids)`` (special
        tokens skipped), so both sets of spans index the same text; when the RM's token ids of that
        text are the policy's own (same tokenizer), the mapping is by position instead: exact, and
        a multi-byte character split over several tokens keeps one value per token."""
        from sumrl.rewards.align import token_char_spans

        queries = list(queries) if queries is not None else [None] * len(summaries)
        texts = list(summaries)
        if tokenizer is not None and token_ids is not None:
            texts = [tokenizer.decode([int(t) for t in ids], skip_special_tokens=True) for ids in token_ids]
        res: list[dict[str, Any]] = []
        was = self.training
        self.eval()
        for s in range(0, len(texts), batch_size):
            v, m, spans = self(documents[s:s + batch_size], texts[s:s + batch_size], queries[s:s + batch_size])
            for b in range(v.shape[0]):
                vals = v[b][m[b]].float().cpu()
                res.append({"score": float(vals.mean()) if vals.numel() else 0.0, "values": vals, "spans": spans[b]})
        self.train(was)
        if tokenizer is not None and token_ids is not None:
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            for i, r in enumerate(res):
                ids = [int(t) for t in token_ids[i]]
                plain = [t for t in ids if t not in special]
                rm_ids = self.summary_ids(texts[i])
                if rm_ids and plain[:len(rm_ids)] == rm_ids:
                    # the RM read exactly the policy's tokens (same tokenizer, as with the policy
                    # backbone): value k belongs to the k-th non-special policy token
                    vals, k, pv = r["values"].tolist(), 0, []
                    for t in ids:
                        if t in special:
                            pv.append(None)
                        else:
                            pv.append(vals[k] if k < len(vals) else None)
                            k += 1
                    r["policy_values"] = pv
                else:
                    pspans = token_char_spans(tokenizer, ids, text=texts[i])
                    r["policy_values"] = map_token_values(pspans, r["spans"], r["values"].tolist())
        return res

    # ------------------------------------------------------------------ persistence

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def save(self, out: str | Path, config: dict, metrics: dict, state: dict[str, torch.Tensor] | None = None) -> None:
        """``state``: the trainable weights when they are not this process's own (FSDP: gathered)."""
        from safetensors.torch import save_file

        from sumrl.utils.io import atomic_dir, write_json

        with atomic_dir(out) as tmp:
            save_file(state if state is not None else self.trainable_state(), str(tmp / "model.safetensors"))
            write_json(tmp / "config.json", {"format": FORMAT, "version": 1, "arch": self.arch, **config})
            write_json(tmp / "metrics.json", metrics)


def read_reward_model_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a reward-model folder written by ``sumrl rm`` (``format``, ``arch``,
    ``normalization``, ``token_normalization``, ``training``); one error naming the file otherwise."""
    from sumrl.utils.io import read_json_file

    p = Path(path)
    cfg_path = p / "config.json"
    if not cfg_path.exists() or not (p / "model.safetensors").exists():
        raise SumrlError(f"{p}: not a reward model folder (needs config.json and model.safetensors from `sumrl rm`)")
    cfg = read_json_file(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise DataError(f"not a sumrl reward model config (format {got!r})", file=str(cfg_path), field="format")
    for key in ("arch", "normalization"):
        if not isinstance(cfg.get(key), dict):
            raise DataError("missing or not an object", file=str(cfg_path), field=key)
    return cfg


def load_reward_model(path: str | Path) -> "LoadedRewardModel":
    """Load a folder written by ``sumrl rm``; returns an object with ``score`` and ``token_scores``."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg = read_reward_model_config(p)
    model = RewardModel(cfg["arch"])
    state = load_file(str(p / "model.safetensors"))
    own = dict(model.named_parameters())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise SumrlError(f"{p}: weights do not match the architecture in config.json (e.g. {unknown[0]})")
    for k, t in state.items():
        if own[k].shape != t.shape:
            raise SumrlError(f"{p}: tensor {k} has shape {tuple(t.shape)}, expected {tuple(own[k].shape)}")
        with torch.no_grad():
            own[k].copy_(t)
    model.eval()
    return LoadedRewardModel(model, cfg, p)


class LoadedRewardModel:
    def __init__(self, model: RewardModel, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path
        self.normalization = config.get("normalization") or None
        self.token_normalization = config.get("token_normalization") or None

    def score(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None) -> list[float]:
        return self.model.score(list(documents), list(summaries), queries)

    def token_scores(self, documents, summaries, queries=None, tokenizer=None, token_ids=None) -> list[dict]:
        return self.model.token_scores(list(documents), list(summaries), queries, tokenizer=tokenizer, token_ids=token_ids)


_LOADED: dict[str, LoadedRewardModel] = {}


PAPER_LENGTH_PENALTY = -2.5  # per token beyond the reference length, in raw RM units (reference token = 1)


def paper_length_penalties(token_normalization: dict, paper_penalty: float = PAPER_LENGTH_PENALTY) -> dict[str, float]:
    """The ``length`` reward options that make the per-token normalised RM reward equivalent to
    the paper's raw one. The paper: token reward ``v_t`` (about 1 on a reference token) and
    ``paper_penalty`` (-2.5) per token beyond the reference length ``n_ref``. Ours: ``(v_t - mu) / sd``.
    With ``per_token_penalty = (paper_penalty + mu) / sd`` and ``short_penalty = -mu / sd`` per
    missing reference token, a summary of ``n`` tokens gets

        ours = paper / sd - n_ref * mu / sd        (for n >= n_ref and for n < n_ref alike)

    -- the paper's total on a positive scale minus a per-document constant, which changes no
    preference between two summaries of the same document. Without ``short_penalty`` a
    reference-like token earns about 0 and stopping early would cost nothing."""
    mu, sd = float(token_normalization["mean"]), max(float(token_normalization["std"]), 1e-6)
    return {"per_token_penalty": (paper_penalty + mu) / sd, "short_penalty": -mu / sd}


def _stats(norm: dict | None) -> tuple[float, float] | None:
    if not norm or not norm.get("std"):
        return None
    return float(norm["mean"]), max(float(norm["std"]), 1e-6)


class RewardModelReward:
    """The ``rm:<path>`` registry entry.

    Options: ``normalize`` (default true) and ``per_token`` (default false).

    * Sequence level (``per_token: false``): score = ``(s - mu_seq) / sd_seq`` where ``s`` is the
      RM's sequence score (mean of its token values) and ``mu_seq, sd_seq`` its mean/std over
      held-out reference summaries (stored as ``normalization``). No token rewards.
    * Per token (``per_token: true``): **policy token t gets ``(v_t - mu_tok) / sd_tok``**, where
      ``v_t`` is the RM's value at that token (:func:`map_token_values`) and ``mu_tok, sd_tok`` the
      mean/std of the individual token values over held-out reference summaries (stored as
      ``token_normalization``). The sequence score is 0: all the reward is in the tokens, nothing
      is lumped on the last token, and a typical reference token earns about 0 wherever it stands.
      Policy tokens the RM does not read (special tokens, past its ``max_summary_tokens`` window)
      get 0. Without token ids the score is the sum of the normalised RM token values (the same
      total when the tokenizers agree). Needs a causal RM (``sumrl rm --backbone policy``): with a
      bidirectional one the value at token k depends on tokens after k, which biases reward-to-go
      credit; building such a reward is refused.

    ``normalize: false`` uses the raw values (``mu = 0, sd = 1``).
    """

    def __init__(self, name: str = "rm", path: str = "", normalize: bool = True, per_token: bool = False):
        self.name, self.path, self.normalize, self.per_token = name, str(path), bool(normalize), bool(per_token)
        key = str(Path(self.path).resolve())
        if key not in _LOADED:  # one copy per process even when several rewards name the same RM
            _LOADED[key] = load_reward_model(self.path)
        self.rm = _LOADED[key]
        if self.per_token and not self.rm.model.causal:
            raise ConfigError(f"reward 'rm' ({self.path}): per_token needs a causal reward model, but this one has the "
                              f"bidirectional {self.rm.model.backbone} backbone (its value at token k depends on later "
                              f"tokens, which biases reward-to-go credit); train one with `sumrl rm --backbone policy`")
        if self.per_token and self.normalize and _stats(self.rm.token_normalization) is None:
            raise ConfigError(f"reward 'rm' ({self.path}): per_token with normalize needs per-token statistics "
                              f"(token_normalization in config.json), which this RM folder predates; retrain it "
                              f"with `sumrl rm` or set normalize: false")

    @classmethod
    def options(cls) -> list[str]:
        return ["path", "normalize", "per_token"]

    def stats(self) -> tuple[float, float]:
        """``(mean, std)`` this reward subtracts and divides by (token or sequence statistics)."""
        if not self.normalize:
            return 0.0, 1.0
        st = _stats(self.rm.token_normalization if self.per_token else self.rm.normalization)
        return st if st is not None else (0.0, 1.0)

    def __call__(self, inp: RewardInput) -> RewardOutput:
        mean, std = self.stats()
        if self.per_token:
            if inp.token_ids is not None and inp.tokenizer is None:
                raise SumrlError("reward 'rm' with per_token needs RewardInput.tokenizer")
            res = self.rm.token_scores(inp.documents, inp.summaries, inp.queries, inp.tokenizer, inp.token_ids)
            raw = torch.tensor([r["score"] for r in res])
            if inp.token_ids is not None:
                token_rewards = [torch.tensor([0.0 if v is None else (v - mean) / std for v in r["policy_values"]])
                                 for r in res]
                out = RewardOutput(scores=torch.zeros(len(res)), token_rewards=token_rewards)
            else:
                out = RewardOutput(scores=torch.tensor([float(((r["values"] - mean) / std).sum()) for r in res]))
        else:
            raw = torch.tensor(self.rm.score(inp.documents, inp.summaries, inp.queries))
            out = RewardOutput(scores=(raw - mean) / std)
        out.components = {self.name: out.totals().clone(), f"{self.name}/raw": raw.float()}
        return out
