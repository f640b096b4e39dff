"""Reward models: token-level scalar heads on MiniLM or on a LoRA-adapted policy-family LM.

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
  with the same truncation rule counted in the LM's tokens. A summary token's value sees the
  document prefix and the summary up to that token.

Per-token rewards for RL: :meth:`RewardModel.token_scores` maps RM token values onto the
*policy's* tokens by character spans: each RM token's share ``value / n_rm_tokens`` is spread
evenly over the policy tokens overlapping its characters, so the per-token values sum exactly
to the sequence score (whatever the two tokenizers are). Policy tokens beyond the RM's summary
window get 0.

Saved folder: ``config.json`` (architecture, training config, normalisation), ``model.safetensors``
(only the trained tensors: head + trained layers, or head + LoRA), ``metrics.json``.
Normalisation: mean/std of the RM's scores on reference summaries (synthetic RM: held-out
``val`` references; preference RM: the training pairs' summaries), so RL can use
``(score - mean) / std``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from sumrl.errors import ConfigError, DataError, SumrlError
from sumrl.rewards.base import RewardInput, RewardOutput

FORMAT = "sumrl-reward-model"


# =========================================================================== model


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
            lm, tok = load_model(arch["model"])
            disable_dropout(lm)
            self.lm = add_lora(lm, r=int(arch.get("lora_r", 8)), alpha=2 * int(arch.get("lora_r", 8)))
            self.tokenizer = tok
            cfg = getattr(lm.config, "text_config", None) or lm.config
            hidden = cfg.hidden_size
        else:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose minilm or policy")
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
        for first, s in zip(firsts, sums):
            se = tok(s, add_special_tokens=False, return_offsets_mapping=True)
            s_ids = list(se["input_ids"])
            budget = max(0, self.max_length - len(s_ids) - len(head_ids) - len(tail_ids))
            d_ids = tok(first, add_special_tokens=False)["input_ids"][:budget]
            ids = head_ids + d_ids + tail_ids + s_ids
            m = [False] * (len(ids) - len(s_ids)) + [True] * len(s_ids)
            sp = [tuple(o) for o in se["offset_mapping"]]
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

    # ------------------------------------------------------------------ forward

    def device(self) -> torch.device:
        return self.head.weight.device

    def forward_values(self, documents, summaries, queries) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(B, T) token values, (B, T) summary mask, char spans of the summary tokens."""
        batch, mask, spans = self._features(documents, summaries, queries)
        batch = {k: v.to(self.device()) for k, v in batch.items()}
        if self.backbone == "minilm":
            h = self.encoder(**batch).last_hidden_state
        else:
            base = self.lm.get_base_model()
            backbone = getattr(base, base.base_model_prefix)  # the transformer without the LM head: no vocab logits
            h = backbone(**batch).last_hidden_state
        values = self.head(h.float()).squeeze(-1)
        return values, mask.to(values.device), spans

    @staticmethod
    def sequence_scores(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        return (values * m).sum(1) / m.sum(1).clamp(min=1)

    @torch.inference_mode()
    def score(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None,
              batch_size: int = 16) -> list[float]:
        """Sequence score of each summary (mean of its token values; not normalised)."""
        was = self.training
        self.eval()
        queries = list(queries) if queries is not None else [None] * len(summaries)
        out: list[float] = []
        for s in range(0, len(summaries), batch_size):
            v, m, _ = self.forward_values(documents[s:s + batch_size], summaries[s:s + batch_size], queries[s:s + batch_size])
            out.extend(self.sequence_scores(v, m).tolist())
        self.train(was)
        return out

    @torch.inference_mode()
    def token_scores(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None,
                     tokenizer: Any = None, token_ids: Sequence[Sequence[int]] | None = None,
                     batch_size: int = 16) -> list[dict[str, Any]]:
        """Per summary: ``{"score", "values" (RM tokens), "spans" (their char spans)}`` and, with
        ``tokenizer`` + ``token_ids`` (the policy's), ``"policy_values"``: one value per policy token,
        summing exactly to ``score`` (see the module docstring)."""
        from sumrl.rewards.align import spread_penalties, token_char_spans

        self.eval()
        queries = list(queries) if queries is not None else [None] * len(summaries)
        res: list[dict[str, Any]] = []
        for s in range(0, len(summaries), batch_size):
            v, m, spans = self.forward_values(documents[s:s + batch_size], summaries[s:s + batch_size], queries[s:s + batch_size])
            for b in range(v.shape[0]):
                vals = v[b][m[b]].float().cpu()
                res.append({"score": float(vals.mean()) if vals.numel() else 0.0, "values": vals, "spans": spans[b]})
        if tokenizer is not None and token_ids is not None:
            for i, r in enumerate(res):
                pspans = token_char_spans(tokenizer, token_ids[i])
                n_rm = max(len(r["spans"]), 1)
                shares = [(sp, float(val) / n_rm) for sp, val in zip(r["spans"], r["values"].tolist())]
                per_tok, leftover = spread_penalties(len(pspans), pspans, shares)
                r["policy_values"] = torch.tensor(per_tok)
                r["leftover"] = leftover  # RM tokens no policy token carries (empty summary): goes to the score
        return res

    # ------------------------------------------------------------------ persistence

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def save(self, out: str | Path, config: dict, metrics: dict) -> None:
        from safetensors.torch import save_file

        from sumrl.utils.io import atomic_dir, write_json

        with atomic_dir(out) as tmp:
            save_file(self.trainable_state(), str(tmp / "model.safetensors"))
            write_json(tmp / "config.json", {"format": FORMAT, "version": 1, "arch": self.arch, **config})
            write_json(tmp / "metrics.json", metrics)


def load_reward_model(path: str | Path) -> "LoadedRewardModel":
    """Load a folder written by ``sumrl rm``; returns an object with ``score`` and ``token_scores``."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg_path = p / "config.json"
    if not cfg_path.exists() or not (p / "model.safetensors").exists():
        raise SumrlError(f"{p}: not a reward model folder (needs config.json and model.safetensors from `sumrl rm`)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", file=str(cfg_path), line=e.lineno) from None
    if cfg.get("format") != FORMAT:
        raise DataError(f"not a sumrl reward model config (format {cfg.get('format')!r})", file=str(cfg_path), field="format")
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

    def score(self, documents: Sequence[str], summaries: Sequence[str], queries: Sequence[str | None] | None = None) -> list[float]:
        return self.model.score(list(documents), list(summaries), queries)

    def token_scores(self, documents, summaries, queries=None, tokenizer=None, token_ids=None) -> list[dict]:
        return self.model.token_scores(list(documents), list(summaries), queries, tokenizer=tokenizer, token_ids=token_ids)


_LOADED: dict[str, LoadedRewardModel] = {}


class RewardModelReward:
    """The ``rm:<path>`` registry entry.

    Options: ``normalize`` (default true: ``(score - mean) / std`` with the statistics stored in
    the folder), ``per_token`` (default false: sequence score only; true: the score spread over
    the policy tokens as in :meth:`RewardModel.token_scores`, the normalisation offset going to the
    sequence score).
    """

    def __init__(self, name: str = "rm", path: str = "", normalize: bool = True, per_token: bool = False):
        self.name, self.path, self.normalize, self.per_token = name, str(path), bool(normalize), bool(per_token)
        key = str(Path(self.path).resolve())
        if key not in _LOADED:  # one copy per process even when several rewards name the same RM
            _LOADED[key] = load_reward_model(self.path)
        self.rm = _LOADED[key]

    @classmethod
    def options(cls) -> list[str]:
        return ["path", "normalize", "per_token"]

    def __call__(self, inp: RewardInput) -> RewardOutput:
        mean, std = 0.0, 1.0
        norm = self.rm.normalization
        if self.normalize and norm and norm.get("std"):
            mean, std = float(norm["mean"]), max(float(norm["std"]), 1e-6)
        if self.per_token and inp.token_ids is not None:
            if inp.tokenizer is None:
                raise SumrlError("reward 'rm' with per_token needs RewardInput.tokenizer")
            res = self.rm.token_scores(inp.documents, inp.summaries, inp.queries, inp.tokenizer, inp.token_ids)
            raw = torch.tensor([r["score"] for r in res])
            scores = torch.tensor([r["leftover"] / std - mean / std for r in res])
            token_rewards = [r["policy_values"] / std for r in res]
            out = RewardOutput(scores=scores, token_rewards=token_rewards)
        else:
            raw = torch.tensor(self.rm.score(inp.documents, inp.summaries, inp.queries))
            out = RewardOutput(scores=(raw - mean) / std)
        out.components = {self.name: out.totals().clone(), f"{self.name}/raw": raw.float()}
        return out


# =========================================================================== training


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _arch_from(cfg: Any) -> dict[str, Any]:
    return {"backbone": cfg.backbone, "model": cfg.model if cfg.backbone == "policy" else None,
            "max_length": cfg.max_length, "max_summary_tokens": cfg.max_summary_tokens,
            "train_layers": cfg.train_layers, "lora_r": cfg.lora_r}


def _init_model(cfg: Any) -> RewardModel:
    if cfg.init:
        # continue from a trained RM (e.g. synthetic first, then human pairs); its architecture wins
        return load_reward_model(cfg.init).model
    return RewardModel(_arch_from(cfg))


def _token_mse(values: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over items of the mean squared error of each summary token to its item's target."""
    m = mask.float()
    err = (values - targets[:, None]) ** 2 * m
    return (err.sum(1) / m.sum(1).clamp(min=1)).mean()


def _mean_std(xs: Sequence[float]) -> dict[str, float]:
    n = len(xs)
    if not n:
        return {"mean": 0.0, "std": 1.0, "n": 0}
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / max(n - 1, 1)) if n > 1 else 1.0
    return {"mean": mu, "std": sd if sd > 0 else 1.0, "n": n}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _optimizer_step(loss: torch.Tensor, opt: Any, params: list, history: list[float], step: int, steps: int,
                    t0: float) -> None:
    """One clipped AdamW step shared by both reward-model trainers; a non-finite loss stops the run."""
    if not torch.isfinite(loss):
        raise SumrlError(f"reward-model training diverged at step {step} (loss {loss.item()}); lower --lr")
    opt.zero_grad()
    loss.backward()
    from sumrl.training.optim import check_step  # non-finite gradient: stop before the step

    check_step(float(loss.item()), float(torch.nn.utils.clip_grad_norm_(params, 1.0)), step, what="reward-model training")
    opt.step()
    history.append(loss.item())
    if step % max(1, steps // 10) == 0 or step == steps:
        _log(f"step {step}/{steps} loss {sum(history[-10:]) / len(history[-10:]):.4f} ({time.time() - t0:.0f}s)")


def train_synthetic_rm(cfg: Any) -> dict[str, Any]:
    """Train the token-level RM on (document, reference) positives and generated negatives.

    Each step takes ``batch_size`` training examples; each contributes its positive (all tokens
    target 1) and one negative (all tokens target 0) of a class drawn uniformly among the classes
    that apply to it. Positives and negatives are thus equally many, and each of the K classes
    gets 1/K of the negative weight -- in expectation the paper's weighting (positives weight 1,
    each negative class 1/K), with lower variance than materialising all K negatives per step.
    Squared loss per token. Returns the metrics written to ``metrics.json``.
    """
    from sumrl.data import load_data
    from sumrl.rewards.negatives import NEGATIVE_CLASSES, make_negatives

    _set_seed(cfg.seed)
    classes = list(cfg.classes)
    bad = [c for c in classes if c not in NEGATIVE_CLASSES]
    if bad:
        raise ConfigError(f"unknown negative class(es) {', '.join(bad)}; choose from {', '.join(NEGATIVE_CLASSES)}")
    t0 = time.time()
    train = [e for e in load_data(cfg.data, "train", limit=cfg.limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    val = [e for e in load_data(cfg.data, "val", limit=cfg.norm_limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    test = [e for e in load_data(cfg.data, cfg.eval_split, limit=cfg.eval_limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    if len(train) < 2:
        raise SumrlError(f"{cfg.data}: the synthetic RM needs at least 2 training examples with a reference")
    neg_train = make_negatives(train, classes, seed=cfg.seed)
    neg_test = make_negatives(test, classes, seed=cfg.seed + 1) if test else {c: [] for c in classes}
    applicable = [[c for c in classes if neg_train[c][i] is not None] for i in range(len(train))]
    model = _init_model(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    history = []
    for step in range(1, cfg.steps + 1):
        idx = [rng.randrange(len(train)) for _ in range(cfg.batch_size)]
        docs, sums, qs, tg = [], [], [], []
        for i in idx:
            ex = train[i]
            docs.append(ex.document), sums.append(ex.references[0]), qs.append(ex.query), tg.append(1.0)
            if applicable[i]:
                c = rng.choice(applicable[i])
                docs.append(ex.document), sums.append(neg_train[c][i]), qs.append(ex.query), tg.append(0.0)
        values, mask, _ = model.forward_values(docs, sums, qs)
        loss = _token_mse(values, mask, torch.tensor(tg, device=values.device))
        _optimizer_step(loss, opt, params, history, step, cfg.steps, t0)
    model.eval()
    # held-out: positive scored above its negative, per class
    per_class: dict[str, dict[str, Any]] = {}
    if test:
        pos = model.score([e.document for e in test], [e.references[0] for e in test], [e.query for e in test])
        for c in classes:
            items = [(i, s) for i, s in enumerate(neg_test[c]) if s is not None]
            if not items:
                per_class[c] = {"accuracy": None, "n": 0}
                continue
            neg = model.score([test[i].document for i, _ in items], [s for _, s in items], [test[i].query for i, _ in items])
            wins = sum(1.0 if pos[i] > n else 0.5 if pos[i] == n else 0.0 for (i, _), n in zip(items, neg))
            per_class[c] = {"accuracy": wins / len(items), "n": len(items),
                            "mean_margin": sum(pos[i] - n for (i, _), n in zip(items, neg)) / len(items)}
        pos_mean = sum(pos) / len(pos)
    else:
        pos_mean = None
    accs = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    norm_scores = model.score([e.document for e in val], [e.references[0] for e in val], [e.query for e in val]) if val else []
    normalization = {**_mean_std(norm_scores), "on": f"{cfg.data} val references"}
    metrics = {
        "kind": "synthetic", "data": cfg.data, "eval_split": cfg.eval_split, "n_train": len(train), "n_test": len(test),
        "steps": cfg.steps, "final_loss": sum(history[-10:]) / max(len(history[-10:]), 1),
        "heldout_accuracy_per_class": per_class,
        "heldout_accuracy_mean": sum(accs) / len(accs) if accs else None,
        "heldout_positive_mean_score": pos_mean,
        "normalization": normalization, "seconds": round(time.time() - t0, 1),
    }
    model.save(cfg.out, {"kind": "synthetic", "training": asdict(cfg), "normalization": normalization}, metrics)
    return metrics


# --------------------------------------------------------------------------- preference pairs


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a pairs.jsonl file (docs/architecture.md); errors name file, line, field."""
    p = Path(path)
    if not p.exists():
        raise DataError("pairs file not found", file=str(p))
    rows = []
    from sumrl.utils.io import iter_jsonl_file  # one DataError for bad UTF-8/JSON, a folder; BOM accepted

    for ln, r in iter_jsonl_file(p):
        if not isinstance(r, dict):
            raise DataError("a pair must be a JSON object", file=str(p), line=ln)
        for fld in ("document", "chosen", "rejected"):
            if not isinstance(r.get(fld), str):
                raise DataError("missing or not a string", file=str(p), line=ln, field=fld)
        if r.get("id") is None:
            raise DataError("missing (pairs are split by document id)", file=str(p), line=ln, field="id")
        m = r.get("margin")
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)):
            raise DataError(f"must be a number or null, got {m!r}", file=str(p), line=ln, field="margin")
        if r.get("query") is not None and not isinstance(r["query"], str):
            raise DataError("must be a string or null", file=str(p), line=ln, field="query")
        if r.get("meta") is not None and not isinstance(r["meta"], dict):
            raise DataError("must be an object", file=str(p), line=ln, field="meta")
        r["id"] = str(r["id"])
        r["_line"] = ln
        rows.append(r)
    if not rows:
        raise DataError("no pairs", file=str(p))
    return rows


def pair_split(row: dict[str, Any], seed: int = 0, test_fraction: float = 0.2) -> str:
    """``meta.split`` when the file has one (written by ``sumrl data pairs``), else the seeded
    document-id rule of :func:`sumrl.data.pairs.document_split`."""
    from sumrl.data.pairs import document_split

    s = (row.get("meta") or {}).get("split")
    return str(s) if s else document_split(row["id"], seed=seed, test_fraction=test_fraction)


def train_preference_rm(cfg: Any) -> dict[str, Any]:
    """Bradley-Terry: ``-log sigmoid(s(chosen) - s(rejected) - margin_scale * margin)`` (margin term
    only with ``--margin``; null margins count 0). Held out by document: pairs of ``test``
    documents are never trained on and give the reported pairwise accuracy."""
    _set_seed(cfg.seed)
    if not cfg.pairs:
        raise ConfigError("--kind preference needs --pairs FILE (pairs.jsonl from `sumrl data pairs` or `sumrl human export`)")
    t0 = time.time()
    rows = read_pairs(cfg.pairs)
    train = [r for r in rows if pair_split(r, cfg.seed, cfg.test_fraction) != "test"]
    test = [r for r in rows if pair_split(r, cfg.seed, cfg.test_fraction) == "test"]
    if cfg.limit:
        train = train[:cfg.limit]
    if cfg.eval_limit:
        test = test[:cfg.eval_limit]
    if not train:
        raise SumrlError(f"{cfg.pairs}: no training pairs (every document is in the test split)")
    model = _init_model(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    history = []
    for step in range(1, cfg.steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(cfg.batch_size)]
        docs = [r["document"] for r in batch] * 2
        sums = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
        qs = [r.get("query") for r in batch] * 2
        values, mask, _ = model.forward_values(docs, sums, qs)
        s = RewardModel.sequence_scores(values, mask)
        sc, sr = s[:len(batch)], s[len(batch):]
        margin = torch.tensor([float(r.get("margin") or 0.0) for r in batch], device=s.device) if cfg.margin else 0.0
        loss = -torch.nn.functional.logsigmoid(sc - sr - cfg.margin_scale * margin).mean()
        _optimizer_step(loss, opt, params, history, step, cfg.steps, t0)
    model.eval()
    acc = None
    if test:
        c = model.score([r["document"] for r in test], [r["chosen"] for r in test], [r.get("query") for r in test])
        rj = model.score([r["document"] for r in test], [r["rejected"] for r in test], [r.get("query") for r in test])
        acc = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c, rj)) / len(test)
    sample = train[:cfg.norm_limit] if cfg.norm_limit else train
    norm_scores = model.score([r["document"] for r in sample] * 2, [r["chosen"] for r in sample] + [r["rejected"] for r in sample],
                              [r.get("query") for r in sample] * 2) if sample else []
    normalization = {**_mean_std(norm_scores), "on": "training pairs (chosen and rejected summaries)"}
    by_source: dict[str, int] = {}
    for r in test:
        by_source[str(r.get("source"))] = by_source.get(str(r.get("source")), 0) + 1
    metrics = {"kind": "preference", "pairs": str(cfg.pairs), "n_train_pairs": len(train), "n_test_pairs": len(test),
               "test_pairs_by_source": by_source, "steps": cfg.steps,
               "final_loss": sum(history[-10:]) / max(len(history[-10:]), 1),
               "heldout_pairwise_accuracy": acc, "normalization": normalization, "seconds": round(time.time() - t0, 1)}
    model.save(cfg.out, {"kind": "preference", "training": asdict(cfg), "normalization": normalization}, metrics)
    return metrics
