"""Training the token-level reward models (``sumrl rm train``): the synthetic trainer (references
vs generated negatives, squared loss per token) and the preference trainer (Bradley-Terry on
human pairs), data-parallel under ``accelerate launch``. The model, its saved folder and the
reward wrapper are :mod:`sumrl.rewards.reward_model`; the loss functions here are pure and
hand-tested (tests/test_reward_model.py).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict
from typing import Any, Sequence

import torch

from sumrl.errors import ConfigError, SumrlError
from sumrl.rewards.reward_model import RewardModel, load_reward_model, paper_length_penalties
from sumrl.training.optim import DivergenceGuard
from sumrl.utils.console import get_logger

log = get_logger(__name__)



def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _arch_from(cfg: Any) -> dict[str, Any]:
    return {"backbone": cfg.backbone, "model": cfg.model if cfg.backbone == "policy" else None,
            "max_length": cfg.max_length, "max_summary_tokens": cfg.max_summary_tokens,
            "train_layers": cfg.train_layers, "lora_r": cfg.lora_r, "lora_layers": getattr(cfg, "lora_layers", -1),
            "load_in_4bit": bool(getattr(cfg, "load_in_4bit", False))}


def _init_model(cfg: Any) -> RewardModel:
    from sumrl.training.parallel import forget_deepspeed_config

    # built before this run's Accelerator exists: as in one process, never inside a DeepSpeed ZeRO-3 construction
    # context left registered by an earlier run in the same process (the 2-process tests run several commands)
    forget_deepspeed_config()
    if cfg.init:
        # continue from a trained RM (e.g. synthetic first, then human pairs); its architecture wins
        return load_reward_model(cfg.init).model
    return RewardModel(_arch_from(cfg))


# ----------------------------------------------------------------------------- pure loss functions


def token_mse_loss(values: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Synthetic RM loss: mean over items of the mean squared error of each summary token's value
    (``values[i, t]`` where ``mask[i, t]``) to its item's target (1 positive, 0 negative)."""
    m = mask.float()
    err = (values - targets[:, None]) ** 2 * m
    return (err.sum(1) / m.sum(1).clamp(min=1)).mean()


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                         margin_scale: float = 1.0) -> torch.Tensor:
    """Preference RM loss of each pair: ``-log sigmoid(s(chosen) - s(rejected) - margin_scale *
    margin)`` (Bradley-Terry; the margin term is Llama 2's margin loss). Callers reduce: the trainer
    sums a process's pairs and divides by the step's global pair count."""
    return -torch.nn.functional.logsigmoid(chosen - rejected - margin_scale * margin)


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` with the sample (n - 1) standard deviation; std 1 when it is 0 or
    undefined, so that ``(x - mean) / std`` is always defined."""
    n = len(xs)
    if not n:
        return {"mean": 0.0, "std": 1.0, "n": 0}
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / max(n - 1, 1)) if n > 1 else 1.0
    return {"mean": mu, "std": sd if sd > 0 else 1.0, "n": n}


def _log(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process (torchrun / accelerate launch)
        log.info(msg)


class _Parallel:
    """Data parallelism of the reward-model trainers under ``accelerate launch`` / ``torchrun``
    (one process: a no-op wrapper). Every process draws the same global batch (same seed), runs its
    ``1/world`` share through the wrapped module and back-propagates its share of the *global*
    loss times ``world``: Accelerate averages gradients over processes, so the step is the one
    process's step on the whole batch. Only the main process saves."""

    def __init__(self, model: "RewardModel", opt: Any):
        from sumrl.training import parallel as par

        self.acc = par.make_accelerator(**par.accelerator_kwargs())
        self.rank, self.world, self.is_main = self.acc.process_index, self.acc.num_processes, self.acc.is_main_process
        self.fsdp = self.world > 1 and getattr(self.acc.state, "fsdp_plugin", None) is not None
        # DeepSpeed ZeRO-2: the engine driven step by step (sumrl.training.parallel, "DeepSpeed"); clipping 1.0
        self.ds = par.is_deepspeed(self.acc)
        self.opt = opt
        # ZeRO-3: parameters partitioned too; every forward (training, held-out scoring, normalisation statistics)
        # gathers them layer by layer, a collective: every process runs the same ones, as it already does
        self.z3 = par.is_zero3(self.acc)
        if self.ds:
            par.check_deepspeed(self.acc, "rm")
        if self.fsdp:  # FSDP2: the optimizer is prepared with the model (its parameters become shards)
            self.module, self.opt = self.acc.prepare(model, opt)
        elif self.ds:
            self.module, self.opt = par.prepare_deepspeed(self.acc, model, opt, max_grad_norm=1.0)
        else:
            self.module = self.acc.prepare(model) if self.world > 1 else model
        self.raw = model
        self.params = [p for p in model.parameters() if p.requires_grad]  # after sharding: the shards
        if self.world > 1:
            from torch.distributed.fsdp import FSDPModule

            how = ("FSDP2, parameters, gradients and optimizer state sharded" if isinstance(self.module, FSDPModule)
                   else f"DeepSpeed ZeRO-{self.acc.state.deepspeed_plugin.zero_stage}, "
                        + ("parameters, " if self.z3 else "") + "gradients and optimizer state partitioned"
                   if self.ds else "data-parallel")
            _log(f"rm: {self.world} processes ({how})")

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Back-propagate this process's share of the loss (``last``: its last micro-batch of the step,
        DeepSpeed's accumulation boundary)."""
        if self.ds:
            from sumrl.training.parallel import deepspeed_backward

            deepspeed_backward(self.module, loss, boundary=last)
        else:
            loss.backward()

    def step(self) -> None:
        """The optimizer step (DeepSpeed: the engine's, which clips to the 1.0 :meth:`clip` reports)."""
        if self.ds:
            from sumrl.training.parallel import deepspeed_step

            deepspeed_step(self.module)
        else:
            self.opt.step()

    def clip(self, max_norm: float) -> float:
        """The global gradient norm (clipped to ``max_norm``); FSDP: over all shards; DeepSpeed: over all
        partitions, before the step (which clips by the engine's own 1.0: :func:`prepare_deepspeed`)."""
        if self.ds:
            from sumrl.training.parallel import deepspeed_grad_norm

            return deepspeed_grad_norm(self.module)
        if self.fsdp:
            return float(self.acc.clip_grad_norm_(self.params, max_norm))
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

    def state(self) -> dict[str, torch.Tensor] | None:
        """The full trainable weights for saving; FSDP gathers them (a collective: every process
        calls it), otherwise ``None`` (the model's own)."""
        if not self.fsdp:
            return None
        from sumrl.models.sharding import whole_tensor

        return {n: whole_tensor(p) for n, p in self.raw.named_parameters() if p.requires_grad}

    def save_and_finish(self, model: "RewardModel", cfg: Any, kind: str, normalization: dict,
                        token_normalization: dict, metrics: dict) -> dict:
        """Save the trained reward model (the main process; under FSDP the weights are gathered on
        every process first), wait for every process, and return ``metrics`` (with ``is_main``
        when several processes run)."""
        from sumrl.models.sharding import zero3_gathered

        full = self.state()  # FSDP: a collective, every process calls it
        # ZeRO-3: every parameter gathered whole on every process (a collective), the main one saves
        with zero3_gathered(model.parameters(), self.z3):
            if self.is_main:
                model.save(cfg.out, {"kind": kind, "training": asdict(cfg), "normalization": normalization,
                                     "token_normalization": token_normalization}, metrics, state=full)
        self.acc.wait_for_everyone()
        return {**metrics, "is_main": self.is_main} if self.world > 1 else metrics

    def check(self, n: int, what: str) -> None:
        if n % self.world:
            raise ConfigError(f"--batch-size: {n} {what} per step do not split evenly over {self.world} processes")

    def mine(self, items: list) -> list:
        """This process's share: every ``world``-th item from ``rank`` (items sorted by length stay
        balanced over processes)."""
        return items[self.rank::self.world]

    def total(self, x: float) -> float:
        """Sum over processes."""
        if self.world == 1:
            return x
        from sumrl.training.parallel import reduce_sums

        return reduce_sums(self.acc, {"x": x})["x"]


def divergence_guard(cfg: Any) -> DivergenceGuard:
    """The reward-model trainers' per-step checks (the same rules as SFT's): a non-finite loss or
    gradient, a zero gradient at a positive loss, a loss over ``max_loss_ratio`` x the first one."""
    return DivergenceGuard(what="reward-model training", max_loss_ratio=getattr(cfg, "max_loss_ratio", 0.0))


def _optimizer_step(loss: torch.Tensor, opt: Any, params: list, history: list[float], step: int, steps: int,
                    t0: float, guard: Any, par: "_Parallel | None" = None) -> None:
    """One clipped AdamW step (preference RM); ``guard`` stops the run before the step. With several
    processes ``loss`` is this process's share of the global loss (:class:`_Parallel`)."""
    if not torch.isfinite(loss):
        raise SumrlError(f"reward-model training diverged at step {step} (loss {loss.item()}); lower --lr")
    opt.zero_grad()
    world = par.world if par is not None else 1
    par.backward(loss * world) if par is not None else loss.backward()  # processes' gradients are averaged
    value = par.total(float(loss.item())) if par is not None else float(loss.item())
    guard.check(value, par.clip(1.0) if par is not None else float(torch.nn.utils.clip_grad_norm_(params, 1.0)), step)
    par.step() if par is not None else opt.step()
    history.append(value)
    if step % max(1, steps // 10) == 0 or step == steps:
        _log(f"step {step}/{steps} loss {sum(history[-10:]) / len(history[-10:]):.4f} ({time.time() - t0:.0f}s)")


def _accumulated_step(items: list[tuple[str, str, str | None, float]], model: Any, opt: Any, params: list,
                      micro: int, history: list[float], step: int, steps: int, t0: float, guard: Any,
                      par: "_Parallel | None" = None) -> None:
    """One optimizer step on the mean over ``items`` of each item's per-token squared error
    (:func:`token_mse_loss`), computed in micro-batches of similar length (padding a 60-token summary to
    a 250-token one wastes CPU time); gradients accumulate so the step equals the full-batch one.
    With several processes (``par``) each runs its share of the items (:class:`_Parallel`)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    world = par.world if par is not None else 1
    if par is not None:
        order = par.mine(order)
    chunks = [order[s:s + micro] for s in range(0, len(order), micro)] if micro > 0 else [order]
    opt.zero_grad()
    total = 0.0
    for k, ch in enumerate(chunks):
        d, sm, q, tg = zip(*(items[i] for i in ch))
        values, mask, _ = model(list(d), list(sm), list(q))
        loss = token_mse_loss(values, mask, torch.tensor(tg, device=values.device)) * (len(ch) / len(items))
        if not torch.isfinite(loss):
            raise SumrlError(f"reward-model training diverged at step {step} (loss {loss.item()}); lower --lr")
        if par is not None:  # processes' gradients are averaged
            par.backward(loss * world, last=k == len(chunks) - 1)
        else:
            loss.backward()
        total += loss.item()
    if par is not None:
        total = par.total(total)
    guard.check(total, par.clip(1.0) if par is not None else float(torch.nn.utils.clip_grad_norm_(params, 1.0)),
                step)  # before the step
    par.step() if par is not None else opt.step()
    history.append(total)
    if step == 1 or step % max(1, steps // 20) == 0 or step == steps:
        _log(f"step {step}/{steps} loss {sum(history[-10:]) / len(history[-10:]):.4f} ({time.time() - t0:.0f}s)")


def drop_unseen_negatives(model: RewardModel, examples: Sequence[Any], negatives: dict[str, list[str | None]]
                          ) -> dict[str, dict[str, int]]:
    """Set to None, in place, every negative that is the same RM input as its positive (same
    summary token ids after the ``max_summary_tokens`` cut: e.g. a truncation or a repeated ending
    that starts past the window). Training on such a pair asks the RM for 1 and 0 on one input.
    Returns ``{class: {"kept", "dropped_same_as_positive", "not_applicable"}}``."""
    pos = [model.summary_ids(e.references[0]) for e in examples]
    counts: dict[str, dict[str, int]] = {}
    for c, col in negatives.items():
        kept = dropped = na = 0
        for i, neg in enumerate(col):
            if neg is None:
                na += 1
            elif model.summary_ids(neg) == pos[i]:
                col[i] = None
                dropped += 1
            else:
                kept += 1
        counts[c] = {"kept": kept, "dropped_same_as_positive": dropped, "not_applicable": na}
    return counts


def balanced_negative_slots(classes: Sequence[str], pools: dict[str, list[int]], n: int, start: int,
                            rng: random.Random) -> list[tuple[str, int]]:
    """``n`` (class, example index) negatives: classes in turn from position ``start`` (so over a
    run each class gets the same share, 1/K, of the negatives: the paper's weighting exactly, not
    only in expectation), the example drawn uniformly among those the class applies to."""
    usable = [c for c in classes if pools[c]]
    out = []
    for j in range(n):
        c = usable[(start + j) % len(usable)]
        out.append((c, pools[c][rng.randrange(len(pools[c]))]))
    return out


def train_synthetic_rm(cfg: Any) -> dict[str, Any]:
    """Train the token-level RM on (document, reference) positives and generated negatives.

    Each step takes ``batch_size`` positives (random training examples, every token target 1) and
    ``batch_size`` negatives (every token target 0), each negative with its own document. The
    negatives' classes go in turn through ``classes`` (:func:`balanced_negative_slots`), so each of
    the K classes is exactly 1/K of the negative weight (the last-mile paper: positives weight 1,
    each of its five negative classes 1/5). Negatives the RM cannot tell from their positive (same
    tokens after the summary cut) are dropped and counted per class. Squared loss per token.
    Returns the metrics written to ``metrics.json``.
    """
    from sumrl.data import load_data
    from sumrl.rewards.negatives import make_negatives

    _set_seed(cfg.seed)
    classes = list(cfg.classes)  # checked against NEGATIVE_CLASSES by RMTrainConfig.validate
    t0 = time.time()
    train = [e for e in load_data(cfg.data, "train", limit=cfg.limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    val = [e for e in load_data(cfg.data, "val", limit=cfg.norm_limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    test = [e for e in load_data(cfg.data, cfg.eval_split, limit=cfg.eval_limit, seed=cfg.seed) if e.references and e.references[0].strip()]
    if len(train) < 2:
        raise SumrlError(f"{cfg.data}: the synthetic RM needs at least 2 training examples with a reference")
    model = _init_model(cfg)
    cut = sum(model.n_summary_tokens(e.references[0]) > model.max_summary_tokens for e in train)
    _log(f"{len(train)} training references; {cut} ({100 * cut / len(train):.1f}%) are longer than "
         f"max_summary_tokens={model.max_summary_tokens} and are cut (the RM sees their beginning only)")
    neg_train = make_negatives(train, classes, seed=cfg.seed)
    # `seed + 1`, not derive_seed (docs/architecture.md, "One rule per decision"): the held-out
    # accuracies in docs/rewards.md (rm_lastmile, its --seed 1 continuation, the MiniLM table) were
    # measured with these negatives, and a rerun of their commands (26-47 min each) must give them
    # again. Harmless here: negatives are seeded per (seed, class, document id), and a run's
    # held-out documents are never its training documents.
    neg_test = make_negatives(test, classes, seed=cfg.seed + 1) if test else {c: [] for c in classes}
    counts_train = drop_unseen_negatives(model, train, neg_train)
    counts_test = drop_unseen_negatives(model, test, neg_test) if test else {}
    _log("negatives per class (train): " + ", ".join(
        f"{c} {v['kept']} kept / {v['dropped_same_as_positive']} dropped as identical to the positive / "
        f"{v['not_applicable']} n/a" for c, v in counts_train.items()))
    pools = {c: [i for i, n in enumerate(neg_train[c]) if n is not None] for c in classes}
    if not any(pools.values()):
        raise SumrlError(f"{cfg.data}: no usable negative of any class {', '.join(classes)}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    par = _Parallel(model, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0))
    par.check(2 * cfg.batch_size, "positives and negatives")
    opt, params = par.opt, par.params
    rng = random.Random(cfg.seed)
    history: list[float] = []
    guard = divergence_guard(cfg)
    for step in range(1, cfg.steps + 1):
        items = []
        for i in (rng.randrange(len(train)) for _ in range(cfg.batch_size)):
            items.append((train[i].document, train[i].references[0], train[i].query, 1.0))
        for c, i in balanced_negative_slots(classes, pools, cfg.batch_size, (step - 1) * cfg.batch_size, rng):
            items.append((train[i].document, neg_train[c][i], train[i].query, 0.0))
        _accumulated_step(items, par.module, opt, params, cfg.micro_batch_size, history, step, cfg.steps, t0, guard,
                          par)
    model.eval()
    _log(f"trained {cfg.steps} steps in {time.time() - t0:.0f}s; held-out evaluation on {len(test)} {cfg.eval_split} papers")
    # held-out: positive scored above its negative, per class, on documents never trained on
    per_class: dict[str, dict[str, Any]] = {}
    pos_mean = None
    if test:
        pos = model.score([e.document for e in test], [e.references[0] for e in test], [e.query for e in test])
        for c in classes:
            items = [(i, s) for i, s in enumerate(neg_test[c]) if s is not None]
            if not items:
                per_class[c] = {"accuracy": None, "n": 0, **counts_test.get(c, {})}
                continue
            neg = model.score([test[i].document for i, _ in items], [s for _, s in items], [test[i].query for i, _ in items])
            wins = sum(1.0 if pos[i] > n else 0.5 if pos[i] == n else 0.0 for (i, _), n in zip(items, neg))
            per_class[c] = {"accuracy": wins / len(items), "n": len(items),
                            "mean_margin": sum(pos[i] - n for (i, _), n in zip(items, neg)) / len(items),
                            "dropped_same_as_positive": counts_test[c]["dropped_same_as_positive"]}
        pos_mean = sum(pos) / len(pos)
    accs = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    # normalisation statistics on held-out references: of the sequence scores (mean token value,
    # for the sequence-level reward) and of the individual token values (for the per-token reward)
    vals = model.token_values([e.document for e in val], [e.references[0] for e in val], [e.query for e in val]) if val else []
    normalization = {**mean_std([float(v.mean()) for v in vals if v.numel()]), "on": f"{cfg.data} val references"}
    token_normalization = {**mean_std([x for v in vals for x in v.tolist()]),
                           "on": f"{cfg.data} val references, every summary token"}
    metrics = {
        "kind": "synthetic", "data": cfg.data, "eval_split": cfg.eval_split, "n_train": len(train), "n_test": len(test),
        "classes": classes, "steps": cfg.steps, "final_loss": sum(history[-10:]) / max(len(history[-10:]), 1),
        "train_references_cut": cut, "max_summary_tokens": model.max_summary_tokens,
        "negatives_train": counts_train,
        "heldout_accuracy_per_class": per_class,
        "heldout_accuracy_mean": sum(accs) / len(accs) if accs else None,
        "heldout_positive_mean_score": pos_mean,
        "normalization": normalization, "token_normalization": token_normalization,
        # the paper's -2.5 per extra token is in raw RM units (reference token +1): the length-reward
        # options that give the same preferences with the per-token reward (v - mean) / std
        "paper_equivalent_length": paper_length_penalties(token_normalization),
        "seconds": round(time.time() - t0, 1),
    }
    return par.save_and_finish(model, cfg, "synthetic", normalization, token_normalization, metrics)


# --------------------------------------------------------------------------- preference pairs


def train_preference_rm(cfg: Any) -> dict[str, Any]:
    """Bradley-Terry: ``-log sigmoid(s(chosen) - s(rejected) - margin_scale * margin)`` (margin term
    only with ``--margin``; null margins count 0). Held out by document: pairs of ``test``
    documents are never trained on and give the reported pairwise accuracy."""
    _set_seed(cfg.seed)
    if not cfg.pairs:
        raise ConfigError("--kind preference needs --pairs FILE (pairs.jsonl from `sumrl data pairs` or `sumrl human export`)")
    t0 = time.time()
    from sumrl.data.pairs import pair_split, read_pairs

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
    par = _Parallel(model, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0))
    par.check(cfg.batch_size, "pairs")
    opt, params = par.opt, par.params
    rng = random.Random(cfg.seed)
    history = []
    guard = divergence_guard(cfg)
    for step in range(1, cfg.steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(cfg.batch_size)]
        n_global = len(batch)
        batch = par.mine(batch)  # this process's pairs of the step's global batch
        docs = [r["document"] for r in batch] * 2
        sums = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
        qs = [r.get("query") for r in batch] * 2
        values, mask, _ = par.module(docs, sums, qs)
        s = RewardModel.sequence_scores(values, mask)
        sc, sr = s[:len(batch)], s[len(batch):]
        margin = torch.tensor([float(r.get("margin") or 0.0) for r in batch], device=s.device) if cfg.margin else 0.0
        # the global batch's mean: this process's sum over its pairs / all pairs of the step
        loss = bradley_terry_losses(sc, sr, margin, cfg.margin_scale).sum() / n_global
        _optimizer_step(loss, opt, params, history, step, cfg.steps, t0, guard, par)
    model.eval()
    acc = None
    if test:
        c = model.score([r["document"] for r in test], [r["chosen"] for r in test], [r.get("query") for r in test])
        rj = model.score([r["document"] for r in test], [r["rejected"] for r in test], [r.get("query") for r in test])
        acc = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c, rj)) / len(test)
    sample = train[:cfg.norm_limit] if cfg.norm_limit else train
    vals = model.token_values([r["document"] for r in sample] * 2, [r["chosen"] for r in sample] + [r["rejected"] for r in sample],
                              [r.get("query") for r in sample] * 2) if sample else []
    normalization = {**mean_std([float(v.mean()) for v in vals if v.numel()]),
                     "on": "training pairs (chosen and rejected summaries)"}
    token_normalization = {**mean_std([x for v in vals for x in v.tolist()]),
                           "on": "training pairs (chosen and rejected summaries), every summary token"}
    by_source: dict[str, int] = {}
    for r in test:
        by_source[str(r.get("source"))] = by_source.get(str(r.get("source")), 0) + 1
    metrics = {"kind": "preference", "pairs": str(cfg.pairs), "n_train_pairs": len(train), "n_test_pairs": len(test),
               "test_pairs_by_source": by_source, "steps": cfg.steps,
               "final_loss": sum(history[-10:]) / max(len(history[-10:]), 1),
               "heldout_pairwise_accuracy": acc, "normalization": normalization,
               "token_normalization": token_normalization, "seconds": round(time.time() - t0, 1)}
    return par.save_and_finish(model, cfg, "preference", normalization, token_normalization, metrics)


def train_reward_model(cfg: Any) -> dict[str, Any]:
    """``sumrl rm train``: the reward model of ``cfg.kind`` (synthetic negatives or preference pairs)."""
    return train_synthetic_rm(cfg) if cfg.kind == "synthetic" else train_preference_rm(cfg)


def format_rm_metrics(metrics: dict[str, Any]) -> str:
    """What ``sumrl rm train`` prints of a finished run's metrics: held-out accuracy per negative class
    and the token-value scale (synthetic), or held-out pairwise accuracy (preference)."""
    if metrics["kind"] != "synthetic":
        acc = metrics["heldout_pairwise_accuracy"]
        return f"held-out pairwise accuracy: {'n/a' if acc is None else f'{acc:.3f}'} (n={metrics['n_test_pairs']})"
    lines = [f"held-out accuracy per negative class ({metrics['eval_split']} split: reference scored above its "
             f"negative; documents never trained on):"]
    for c, v in metrics["heldout_accuracy_per_class"].items():
        acc = "n/a" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
        margin = "" if v.get("mean_margin") is None else f"  mean margin {v['mean_margin']:+.3f}"
        lines.append(f"  {c:16s} {acc:>6s}  (n={v['n']}){margin}")
    tn = metrics["token_normalization"]
    pe = metrics["paper_equivalent_length"]
    lines.append(f"token values on val references: mean {tn['mean']:.4f}, std {tn['std']:.4f} (n={tn['n']}); the "
                 f"paper's -2.5 length penalty in these units: length reward per_token_penalty "
                 f"{pe['per_token_penalty']:.2f}, short_penalty {pe['short_penalty']:.2f}")
    return "\n".join(lines)
