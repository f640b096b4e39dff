"""`sumrl demo`: the main job, end to end on the embedded default model and built-in data.

Numbered stages; each stage's output folder gets a ``.stage_done.json`` marker when it finishes,
holding a fingerprint of the settings the stage depends on, so rerunning the demo skips the
stages finished with the same settings, refuses (unless --overwrite) those finished with other
settings, and an interrupted training stage resumes from its last checkpoint (stage-level
resume; SFT and RL also resume inside the stage).

  1. base          zero-shot evaluation of the base model on held-out long documents
  2. base-cleaned  the same generations after the seed paper's post-processing
  3. sft           supervised fine-tuning (LoRA) on (document, reference) pairs; early stopping on
                   the validation loss, the best validation's weights are used
  4. eval sft      + sft-cleaned
  5. rm            synthetic token-level reward model ("RL without human feedback")
  6. ppo-lastmile  PPO with the last-mile recipe (recipes/rl_lastmile.yaml): per-token RM rewards,
                   a length penalty beyond the reference, no KL/entropy, half of the batches on
                   reference trajectories
  7. grpo          GRPO with recipes/rl_grpo.yaml (ROUGE + length + repetition rewards, KL term)
  8. eval rl       every RL policy on the same test documents
  9. report        one self-contained HTML file comparing every system, with three before/after
                   examples chosen by a stated rule (25th/50th/75th percentile of RL minus SFT in
                   length-adjusted ROUGE-L)

Every system is decoded greedily with the same guard against loops (--no-repeat-ngram). At the
end the demo prints how far RL moved the policy (KL, sampled length, changed test summaries) and a
verdict from the paired tests of each RL variant against SFT (also in OUT/verdict.txt); the
verdict says "beats SFT" only when RL is significantly better on both length-adjusted ROUGE-L
and similarity to the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sumrl.config import AutoBool, add_dataclass_args, build_config, config_from_args, opt
from sumrl.errors import ConfigError
from sumrl.recipes import RECIPES_DIR

# The packaged recipes (sumrl.recipes: package data, found in an installed wheel too).
RECIPES = RECIPES_DIR
LASTMILE_RECIPE = RECIPES / "rl_lastmile.yaml"
RM_LASTMILE_RECIPE = RECIPES / "rm_lastmile.yaml"
GRPO_RECIPE = RECIPES / "rl_grpo.yaml"

# Every preset uses the same pipeline and the recipes' settings; presets change sizes, plus two
# settings a CPU budget forces: the RL learning rate (a handful of updates at the recipes' 5e-5
# does not move the policy at all: KL 0 in the 2026-11-21 demo) and the decoding guard of the
# evaluation (greedy summaries of a 135M model trained for 30 steps loop: mean rep3 0.49). The
# guard is applied by `sumrl eval` to *every* system alike (zero-shot, SFT, RL), never to RL only.
# CPU presets truncate the documents to a prompt budget this machine handles quickly; `full` is
# sized for one GPU and keeps the recipes' learning rates.
# CPU presets also generate every test paper in one batch (a decoding step of a 135M model on a CPU
# reads all the weights whatever the batch, so one batch of 16 costs less than two of 8: the same
# greedy summaries, ~20% less time); the default preset caps PPO's summaries at the evaluation's
# max_new_tokens (`ppo_cap`, see _ppo; quick's 64 would leave almost no reference whole). The default
# preset's RM trains 12 steps (20 until 2026-11-30): with the exact speed-ups alone the preset was
# still over its 15-minute target (docs/results.md section 1). SFT sequences (prompt + summary) up to
# the RL trainer's --checkpoint-tokens train without activation checkpointing (see _sft).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(n_test=6, max_input_tokens=384, max_new_tokens=64, batch_size=6, sft_steps=4, sft_batch=2,
                  rm_steps=4, ppo_steps=3, ppo_batch=2, ppo_micro=2, ppo_cap="data", grpo_steps=2, grpo_batch=1,
                  grpo_samples=4, bf16="auto", no_repeat_ngram=6, rl_lr=2e-4, sft_patience=2),
    "default": dict(n_test=16, max_input_tokens=512, max_new_tokens=160, batch_size=16, sft_steps=30, sft_batch=2,
                    rm_steps=12, ppo_steps=8, ppo_batch=4, ppo_micro=2, ppo_cap="eval", grpo_steps=6, grpo_batch=1,
                    grpo_samples=4, bf16="auto", no_repeat_ngram=6, rl_lr=2e-4, sft_patience=2),
    "full": dict(n_test=99, max_input_tokens=4096, max_new_tokens=256, batch_size=16, sft_steps=400, sft_batch=16,
                 rm_steps=400, ppo_steps=200, ppo_batch=16, ppo_micro=16, ppo_cap="data", grpo_steps=200, grpo_batch=8,
                 grpo_samples=8, bf16="auto", no_repeat_ngram=6, rl_lr=0.0, sft_patience=3),
}


@dataclass
class DemoConfig:
    preset: str = opt("default", "size preset: quick (target <5 min on a 2-core CPU), default (target <15 min on a "
                                 "2-core CPU without AMX), full (one GPU)",
                      choices=list(PRESETS))
    out: str = opt("runs/demo", "output folder; finished stages found there are not redone")
    model: str = opt("default", "policy model to start from")
    data: str = opt("scisummnet", "built-in dataset or file with long documents (needs train/val/test splits)")
    stages: list[str] = opt(default_factory=lambda: ["base", "sft", "rm", "ppo", "grpo", "report"],
                            help="stages to run (base, sft, rm, ppo, grpo, report); later stages need earlier ones")
    n_test: typing.Optional[int] = opt(None, "held-out test documents evaluated (default: preset)")
    max_input_tokens: typing.Optional[int] = opt(None, "prompt token budget; longer documents are truncated (default: preset)")
    max_new_tokens: typing.Optional[int] = opt(None, "summary token cap (default: preset)")
    batch_size: typing.Optional[int] = opt(None, "generation batch size for evaluation (default: preset)")
    sft_steps: typing.Optional[int] = opt(None, "SFT optimizer steps (default: preset)")
    sft_batch: typing.Optional[int] = opt(None, "SFT examples per step (default: preset)")
    rm_steps: typing.Optional[int] = opt(None, "reward-model steps (default: preset)")
    ppo_steps: typing.Optional[int] = opt(None, "PPO outer steps (default: preset)")
    ppo_batch: typing.Optional[int] = opt(None, "PPO prompts per step (default: preset)")
    ppo_micro: typing.Optional[int] = opt(None, "PPO rows per forward/backward pass; the step's gradient is "
                                                "accumulated over them (default: preset)")
    ppo_cap: typing.Optional[str] = opt(None, "PPO summary cap: data = the last-mile recipe's (95th percentile of "
                                              "the training references + the end token), eval = --max-new-tokens, "
                                              "the evaluation's cap (default: preset)", choices=["data", "eval"])
    grpo_steps: typing.Optional[int] = opt(None, "GRPO outer steps (default: preset)")
    grpo_batch: typing.Optional[int] = opt(None, "GRPO prompts per step (default: preset)")
    grpo_samples: typing.Optional[int] = opt(None, "GRPO completions per prompt (default: preset)")
    bf16: typing.Optional[AutoBool] = opt(None, "bfloat16 autocast in training: auto (the presets' choice) = only "
                                                "where this machine runs bf16 faster, true / false to force")
    no_repeat_ngram: typing.Optional[int] = opt(None, "evaluation decoding guard for every system: no N-token "
                                                      "sequence twice in a summary; 0 = off (default: preset)")
    rl_lr: typing.Optional[float] = opt(None, "learning rate of both RL stages; 0 = the recipes' own (default: preset)")
    sft_patience: typing.Optional[int] = opt(None, "SFT early stopping: validations without improvement before it "
                                                   "stops; the best validation's weights are used (default: preset)")
    seed: int = opt(0, "random seed")
    force: bool = opt(False, "redo every stage even if it finished before")
    overwrite: bool = opt(False, "redo the stages that finished with other settings (another preset, model, "
                                 "sizes); without it such an --out is refused")

    def resolved(self) -> "DemoConfig":
        vals = dataclasses.asdict(self)
        for k, v in PRESETS[self.preset].items():
            if vals.get(k) is None:
                vals[k] = v
        return DemoConfig(**vals)

    def validate(self) -> None:
        known = {"base", "sft", "rm", "ppo", "grpo", "report"}
        bad = [s for s in self.stages if s not in known]
        if bad:
            raise ConfigError(f"--stages: unknown stage(s) {', '.join(bad)}; choose from {', '.join(sorted(known))}")
        for name in ("no_repeat_ngram", "rl_lr", "sft_patience"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        if self.ppo_micro is not None and self.ppo_micro < 1:
            raise ConfigError(f"--ppo-micro must be at least 1, got {self.ppo_micro}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end: zero-shot, SFT, reward model, PPO and GRPO, "
                                    "evaluation, report",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DemoConfig)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------- helpers


def _done(folder: Path) -> bool:
    return (folder / ".stage_done.json").exists()


def _mark_done(folder: Path, seconds: float, info: dict | None = None, fingerprint: str | None = None) -> None:
    from sumrl.utils.io import write_json

    write_json(folder / ".stage_done.json", {"seconds": round(seconds, 1), "fingerprint": fingerprint,
                                             **(info or {})})


# The settings each stage's result depends on (besides the stages it reads from): a stage counts
# as done only if its marker holds the fingerprint of these, so `--preset quick` results are never
# shown as the default preset's.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "eval": ("model", "data", "n_test", "max_input_tokens", "max_new_tokens", "batch_size", "no_repeat_ngram", "seed"),
    "sft": ("model", "data", "sft_steps", "sft_batch", "sft_patience", "max_input_tokens", "max_new_tokens", "bf16",
            "seed"),
    "rm": ("model", "data", "rm_steps", "n_test", "ppo_cap", "max_new_tokens", "seed"),
    "ppo": ("model", "data", "ppo_steps", "ppo_batch", "ppo_micro", "ppo_cap", "rl_lr", "max_input_tokens",
            "max_new_tokens", "bf16", "seed"),
    "grpo": ("model", "data", "grpo_steps", "grpo_batch", "grpo_samples", "rl_lr", "max_input_tokens",
             "max_new_tokens", "bf16", "seed"),
    "report": ("data", "n_test", "seed", "preset"),
}


def stage_fingerprint(cfg: "DemoConfig", kind: str, upstream: list[str] | tuple[str, ...] = ()) -> str:
    """sha256 of a stage's own settings and its upstream stages' fingerprints (so redoing SFT
    invalidates every stage that used the SFT model)."""
    import hashlib

    from sumrl import __version__

    vals = dataclasses.asdict(cfg)
    payload = {"kind": kind, "settings": {k: vals[k] for k in STAGE_SETTINGS[kind]}, "upstream": list(upstream),
               "sumrl": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _started(folder: Path) -> str | None:
    from sumrl.errors import SumrlError
    from sumrl.utils.io import read_json_file

    p = folder / ".stage_started.json"
    if not p.is_file():
        return None
    try:
        m = read_json_file(p)
    except SumrlError:
        return None
    return m.get("fingerprint") if isinstance(m, dict) else None


def _marker(folder: Path) -> dict | None:
    from sumrl.errors import SumrlError
    from sumrl.utils.io import read_json_file

    p = folder / ".stage_done.json"
    if not p.exists():
        return None
    try:
        m = read_json_file(p)
    except SumrlError:
        return {}  # unreadable marker: treated as a stage done with unknown settings
    return m if isinstance(m, dict) else {}


class Stages:
    """Runs named stages once, timing them and printing progress with an ETA of the rest."""

    def __init__(self, cfg: DemoConfig, plan: list[str]):
        self.cfg, self.plan, self.times, self.t0 = cfg, plan, {}, time.perf_counter()

    def run(self, name: str, folder: Path, fn: Callable[[bool], dict | None], fingerprint: str | None = None) -> None:
        """Run ``fn(resume)`` unless the stage finished with this fingerprint; ``resume`` is True when
        an interrupted attempt with the same settings may be continued."""
        i = self.plan.index(name) + 1
        marker = _marker(folder)
        if marker is not None and not self.cfg.force:
            if marker.get("fingerprint") == fingerprint:
                secs = marker.get("seconds", 0)
                secs = secs if isinstance(secs, (int, float)) else 0
                print(f"[{i}/{len(self.plan)}] {name}: done already ({secs:.0f}s earlier) -> {folder}")
                return
            # checked up front by check_out(); reached only with --overwrite
            print(f"[{i}/{len(self.plan)}] {name}: finished earlier with other settings; redoing it (--overwrite)")
        started = _started(folder)
        if started != fingerprint:
            # an unfinished attempt with other settings: its partial output is not this stage's
            for leftover in (".stage_done.json", "predictions.partial.jsonl"):
                if (folder / leftover).exists():
                    (folder / leftover).unlink()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: is a file, but stage '{name}' writes a folder there; use a new --out")
        from sumrl.utils.io import write_json

        write_json(folder / ".stage_started.json", {"fingerprint": fingerprint})
        elapsed = time.perf_counter() - self.t0
        print(f"\n[{i}/{len(self.plan)}] {name} (elapsed {elapsed:.0f}s) -> {folder}", flush=True)
        t = time.perf_counter()
        info = fn(started == fingerprint) or {}
        dt = time.perf_counter() - t
        folder.mkdir(parents=True, exist_ok=True)
        _mark_done(folder, dt, info, fingerprint)
        self.times[name] = dt
        print(f"[{i}/{len(self.plan)}] {name}: {dt:.0f}s", flush=True)


def _eval(cfg: DemoConfig, system: str, out: Path, *, model: str | None = None, predictions: str | None = None,
          cleanup: bool = False) -> dict:
    from sumrl.evaluation.run import EvalConfig, evaluate

    ec = build_config(EvalConfig, overrides=dict(
        model=model, predictions=predictions, data=cfg.data, split="test", limit=cfg.n_test, out=str(out),
        system=system, cleanup=cleanup, max_input_tokens=cfg.max_input_tokens, max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size, no_repeat_ngram=cfg.no_repeat_ngram, seed=cfg.seed))
    m, _ = evaluate(ec)
    return {"rougeL_f": m["metrics"]["rougeL_f"]["mean"], "pred_words": m["metrics"]["pred_words"]["mean"]}


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig, args).resolved()
    return run_demo(cfg)


def run_demo(cfg: DemoConfig) -> int:
    from rich.console import Console

    from sumrl.data.formats import read_run_metrics
    from sumrl.evaluation.harness import format_table
    from sumrl.utils.io import write_json

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out must be a folder")
    from sumrl.models.precision import precision_line, resolve_bf16

    print(precision_line("demo", *resolve_bf16(cfg.bf16)), flush=True)
    want = set(cfg.stages)
    plan = []
    if "base" in want:
        plan += ["eval base", "eval base-cleaned"]
    if "sft" in want:
        plan += ["sft", "eval sft", "eval sft-cleaned"]
    if "rm" in want:
        plan += ["rm"]
    if "ppo" in want:
        plan += ["ppo-lastmile", "eval ppo-lastmile"]
    if "grpo" in want:
        plan += ["grpo", "eval grpo"]
    if "report" in want:
        plan += ["report"]
    d = {name: out / name for name in ["eval_base", "eval_base_cleaned", "sft", "eval_sft", "eval_sft_cleaned", "rm",
                                       "ppo_lastmile", "eval_ppo_lastmile", "grpo", "eval_grpo"]}
    # checked before any stage runs, not after the first ten minutes
    if "ppo" in want:
        if "rm" not in want and not _done(d["rm"]):
            raise ConfigError("stage ppo (last-mile recipe) needs the rm stage")
    # the recipes are package data; missing only in a broken install, where plain PPO/GRPO must not
    # pass for the recipes' runs
    for stage, path in (("ppo", LASTMILE_RECIPE), ("ppo", RM_LASTMILE_RECIPE), ("grpo", GRPO_RECIPE)):
        if stage in want and not path.exists():
            raise ConfigError(f"stage {stage} runs the packaged recipe {path}, which is missing: reinstall sumrl, or "
                              f"leave the stage out (--stages)")
    fp = _plan_fingerprints(cfg, want)
    _check_out(cfg, out, d, plan, fp)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "demo_config.json", dataclasses.asdict(cfg))
    st = Stages(cfg, plan)
    eval_dirs: list[Path] = []

    def ev(name: str, key: str, system: str, **kw: Any) -> None:
        st.run(name, d[key], lambda _resume: _eval(cfg, system, d[key], **kw), fp[name])

    if "base" in want:
        ev("eval base", "eval_base", "base", model=cfg.model)
        ev("eval base-cleaned", "eval_base_cleaned", "base-cleaned", cleanup=True,
           predictions=str(d["eval_base"] / "predictions.jsonl"))
        eval_dirs += [d["eval_base"], d["eval_base_cleaned"]]

    if "sft" in want:
        st.run("sft", d["sft"], lambda resume: _sft(cfg, d["sft"], resume), fp["sft"])
        ev("eval sft", "eval_sft", "sft", model=str(d["sft"]))
        ev("eval sft-cleaned", "eval_sft_cleaned", "sft-cleaned", cleanup=True,
           predictions=str(d["eval_sft"] / "predictions.jsonl"))
        eval_dirs += [d["eval_sft"], d["eval_sft_cleaned"]]
    policy = str(d["sft"]) if "sft" in want else cfg.model

    if "rm" in want:
        st.run("rm", d["rm"], lambda _resume: _rm(cfg, d["rm"]), fp["rm"])
    if "ppo" in want:
        st.run("ppo-lastmile", d["ppo_lastmile"], lambda resume: _ppo(cfg, d["ppo_lastmile"], policy, d["rm"], resume),
               fp["ppo-lastmile"])
        ev("eval ppo-lastmile", "eval_ppo_lastmile", "ppo-lastmile", model=str(d["ppo_lastmile"]))
        eval_dirs.append(d["eval_ppo_lastmile"])
    if "grpo" in want:
        st.run("grpo", d["grpo"], lambda resume: _grpo(cfg, d["grpo"], policy, resume), fp["grpo"])
        ev("eval grpo", "eval_grpo", "grpo", model=str(d["grpo"]))
        eval_dirs.append(d["eval_grpo"])

    report = out / "report.html"
    if "report" in want:
        def _report(_resume: bool) -> dict:
            from sumrl.report import build_report

            train_runs = [p for p in (d["sft"], d["ppo_lastmile"], d["grpo"]) if p.exists()]
            rl_evals = [p for p in (d["eval_ppo_lastmile"], d["eval_grpo"]) if p in eval_dirs]
            # three examples by a rule fixed in advance (25th/50th/75th percentile of RL minus SFT in
            # length-adjusted ROUGE-L), never picked by looking at them; random ones without RL
            by = ("sft", "la_rougeL") if rl_evals and d["eval_sft"] in eval_dirs else None
            build_report(eval_dirs, report, train_runs=train_runs, n_examples=3, seed=cfg.seed, examples_by=by,
                         title=f"sumrl demo ({cfg.preset} preset, {cfg.n_test} {cfg.data} test documents)",
                         markdown_out=out / "results.md")  # the same tables as Markdown, for notes
            return {"report": str(report)}

        st.run("report", out / "report_stage", _report, fp["report"])

    metrics = {read_run_metrics(p)["system"]: read_run_metrics(p)["metrics"]
               for p in eval_dirs if (p / "metrics.json").exists()}
    Console().print(format_table(metrics, keys=["rouge1_f", "rouge2_f", "rougeL_f", "la_rougeL", "bleu", "sim_ref",
                                                "pred_words", "extra_words_pos", "cutoff", "rep3", "hallucination_rate"],
                                 title=f"sumrl demo ({cfg.preset}, n={cfg.n_test} test documents)"))
    if cfg.no_repeat_ngram:
        print(f"every system decoded greedily with the same guard: no {cfg.no_repeat_ngram}-token sequence twice in a "
              "summary (--no-repeat-ngram)")
    rl_pairs = [(name, d[train], d[ev]) for name, train, ev in (("ppo-lastmile", "ppo_lastmile", "eval_ppo_lastmile"),
                                                                ("grpo", "grpo", "eval_grpo"))
                if (d[ev] / "metrics.json").exists()]
    if rl_pairs and (d["eval_sft"] / "metrics.json").exists():
        from sumrl.report.analysis import compare
        from sumrl.report.runs import load_eval_runs

        runs = load_eval_runs([d["eval_sft"], *[ev for _, _, ev in rl_pairs]])
        tests = compare(runs, ["sft"], [n for n, _, _ in rl_pairs], n_bootstrap=1000, seed=cfg.seed).tests
        changed = {name: changed_summaries(d["eval_sft"], ev) for name, _, ev in rl_pairs}
        print("\nDid RL move the policy? (training: objective/kl, the trainer's sample estimate of the KL to the "
              "starting SFT policy -- on a few samples it can be negative -- and the sampled summaries' mean length, "
              "first -> last sampled step; test: RL vs SFT on the same papers)")
        for name, train_dir, _ in rl_pairs:
            print("  " + movement_line(name, rl_movement(train_dir), changed[name], tests))
        text = verdict(tests, changed)
        print(f"\nverdict: {text}")
        from sumrl.utils.io import atomic_write_text

        atomic_write_text(out / "verdict.txt", text + "\n")
    total = time.perf_counter() - st.t0
    print(f"total {total:.0f}s this run; stage times: " +
          ", ".join(f"{k} {v:.0f}s" for k, v in st.times.items()))
    if report.exists():
        print(f"report: {report.resolve()}")
    print(f"outputs: {out.resolve()}")
    return 0


def _plan_fingerprints(cfg: DemoConfig, want: set[str]) -> dict[str, str]:
    import hashlib

    f: dict[str, str] = {}
    f["eval base"] = stage_fingerprint(cfg, "eval", ["base"])
    f["eval base-cleaned"] = stage_fingerprint(cfg, "eval", [f["eval base"], "cleaned"])
    f["sft"] = stage_fingerprint(cfg, "sft")
    f["eval sft"] = stage_fingerprint(cfg, "eval", [f["sft"]])
    f["eval sft-cleaned"] = stage_fingerprint(cfg, "eval", [f["eval sft"], "cleaned"])
    f["rm"] = stage_fingerprint(cfg, "rm")
    policy = f["sft"] if "sft" in want else "base-model"
    def recipe(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "-"

    f["ppo-lastmile"] = stage_fingerprint(cfg, "ppo", [policy, f["rm"], recipe(LASTMILE_RECIPE)])
    f["eval ppo-lastmile"] = stage_fingerprint(cfg, "eval", [f["ppo-lastmile"]])
    f["grpo"] = stage_fingerprint(cfg, "grpo", [policy, recipe(GRPO_RECIPE)])
    f["eval grpo"] = stage_fingerprint(cfg, "eval", [f["grpo"]])
    f["report"] = stage_fingerprint(cfg, "report", sorted(v for k, v in f.items() if k.startswith("eval ")))
    return f


def _check_out(cfg: DemoConfig, out: Path, d: dict[str, Path], plan: list[str], fp: dict[str, str]) -> None:
    """Refuse, before any work, an --out whose finished stages were made with other settings."""
    folders = {"eval base": d["eval_base"], "eval base-cleaned": d["eval_base_cleaned"], "sft": d["sft"],
               "eval sft": d["eval_sft"], "eval sft-cleaned": d["eval_sft_cleaned"], "rm": d["rm"],
               "ppo-lastmile": d["ppo_lastmile"], "eval ppo-lastmile": d["eval_ppo_lastmile"], "grpo": d["grpo"],
               "eval grpo": d["eval_grpo"], "report": out / "report_stage"}
    if cfg.force or cfg.overwrite:
        return
    stale = [name for name in plan if (m := _marker(folders[name])) is not None and m.get("fingerprint") != fp[name]]
    if stale:
        earlier = _previous_preset(out)
        raise ConfigError(f"{out}: {len(stale)} stage(s) ({', '.join(stale)}) finished there with other settings"
                          f"{earlier}; rerun with --overwrite to redo them, or choose a new --out")


def _previous_preset(out: Path) -> str:
    from sumrl.errors import SumrlError
    from sumrl.utils.io import read_json_file

    try:
        prev = read_json_file(out / "demo_config.json")
    except SumrlError:
        return ""
    return f" (last run there: --preset {prev.get('preset')})" if isinstance(prev, dict) and prev.get("preset") else ""


# ------------------------------------------------------------------------------ training stages


def _resume_flags(folder: Path, resume_ok: bool = True) -> dict:
    """Continue an interrupted training stage from its last complete checkpoint -- only when that
    attempt had the same settings (``resume_ok``) -- else start over (an unfinished stage's
    partial output is not a result)."""
    from sumrl.training.checkpoint import last_checkpoint

    resume = resume_ok and last_checkpoint(folder / "checkpoints") is not None
    return {"resume": resume, "overwrite": not resume}


def _sft(cfg: DemoConfig, folder: Path, resume_ok: bool = True) -> dict:
    from sumrl.rl.config import CHECKPOINT_TOKENS
    from sumrl.training.config import SFTConfig
    from sumrl.training.sft import train

    sc = build_config(SFTConfig, overrides=dict(
        model=cfg.model, data=cfg.data, split="train", out=str(folder), steps=cfg.sft_steps, batch_size=cfg.sft_batch,
        max_seq_len=cfg.max_input_tokens + cfg.max_new_tokens, max_target_tokens=cfg.max_new_tokens, lr=3e-4,
        warmup_steps=max(1, cfg.sft_steps // 10), bf16=cfg.bf16,
        # no activation checkpointing: at the demo's sequence length (one sequence of at most
        # max_input_tokens + max_new_tokens per micro-batch) LoRA's activations take ~2 GB without it,
        # and recomputing them costs ~25% of every step (docs/benchmarks.md); same gradients either way
        gradient_checkpointing=cfg.max_input_tokens + cfg.max_new_tokens > CHECKPOINT_TOKENS,
        # validation loss up to four times in the run (at least 2 steps apart: each costs 8 forward
        # passes, ~7 s on the 2-core CPU), so that early stopping can pick the best weights
        eval_every=max(2, cfg.sft_steps // 3), early_stopping_patience=cfg.sft_patience,
        val_examples=8, val_generate=0, save_every=max(5, cfg.sft_steps // 3), seed=cfg.seed,
        **_resume_flags(folder, resume_ok)))
    s = train(sc)
    return {"steps": s.get("steps"), "best_step": s.get("best_step")}


def _rm(cfg: DemoConfig, folder: Path) -> dict:
    from sumrl.training.config import RMTrainConfig
    from sumrl.training.rm import train_synthetic_rm

    from sumrl.config import load_recipe

    # the last-mile RM (recipes/rm_lastmile.yaml: the policy's base + LoRA, causal, as per-token
    # rewards need) on the demo's model. The held-out per-class accuracy (a diagnostic in
    # rm/metrics.json: 6 RM passes per paper) and the normalisation set (it scales PPO's rewards) use
    # the preset's n_test papers. With PPO capped at max_new_tokens (`ppo_cap` eval) the RM reads that
    # many summary tokens, no more (it never scores a longer summary), with the recipe's document
    # budget unchanged: shorter rows for every training and evaluation pass.
    recipe = load_recipe(RM_LASTMILE_RECIPE)
    window = {}
    if cfg.ppo_cap == "eval" and cfg.max_new_tokens < recipe["max_summary_tokens"]:
        window = dict(max_summary_tokens=cfg.max_new_tokens,
                      max_length=recipe["max_length"] - recipe["max_summary_tokens"] + cfg.max_new_tokens)
    rc = build_config(RMTrainConfig, recipe,
                      overrides=dict(data=cfg.data, out=str(folder), model=cfg.model, steps=cfg.rm_steps,
                                     seed=cfg.seed, eval_limit=max(12, cfg.n_test), norm_limit=max(8, cfg.n_test),
                                     **window))
    m = train_synthetic_rm(rc)
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str))}


def _use_bf16(cfg: DemoConfig) -> bool:
    # resolved here for the RL stages (their config takes a bool); the CPU measurement is cached
    from sumrl.models.precision import resolve_bf16

    return resolve_bf16(cfg.bf16)[0]


def _rl_common(cfg: DemoConfig, folder: Path, resume_ok: bool = True) -> dict:
    return dict(data=cfg.data, split="train", out=str(folder), max_prompt_tokens=cfg.max_input_tokens,
                max_new_tokens=cfg.max_new_tokens, bf16=_use_bf16(cfg), seed=cfg.seed,
                save_every=max(2, (cfg.ppo_steps or 4) // 2), sample_every=2,
                # stage 8 evaluates every system on the test documents; a held-out curve during these
                # few steps would cost two greedy passes per run for a before/after we get anyway
                eval_every=0, **_resume_flags(folder, resume_ok))


def _ppo(cfg: DemoConfig, folder: Path, policy: str, rm_dir: Path, resume_ok: bool = True) -> dict:
    """The last-mile recipe (recipes/rl_lastmile.yaml) at demo size."""
    from sumrl.config import load_recipe
    from sumrl.rl.config import RLConfig
    from sumrl.rl.trainer import train

    from sumrl.rewards.reward_model import paper_length_penalties, read_reward_model_config

    recipe = load_recipe(LASTMILE_RECIPE)
    # the recipe's rewards on the demo's own RM; the length penalties are the paper's -2.5 in the
    # units of *this* RM's token values (docs/rewards.md), as the recipe's are for its RM
    pen = paper_length_penalties(read_reward_model_config(rm_dir)["token_normalization"])
    recipe["reward"] = [{**r, "path": str(rm_dir)} if r.get("name") == "rm" else {**r, **pen} if r.get("name") == "length"
                        else r for r in recipe["reward"]]
    # At demo sizes, with the shared-trunk value head (started from the RM's head) instead of a second
    # LoRA trunk pass, and on CPU presets the evaluation's summary cap instead of the recipe's cap from
    # the data (246 tokens on ScisummNet: ~35% more generation and ~11% more positions per pass for
    # summaries that are then evaluated at max_new_tokens anyway); references longer than the cap are
    # left out of reference batches (the trainer says how many).
    # Micro-batches of ppo_micro rows keep each pass under the trainer's checkpointing threshold
    # (--checkpoint-tokens), so no activations are recomputed; accumulation over micro-batches with
    # the mini-batch's exact normaliser is the same update (tests/test_rl_trainer.py).
    over = dict(policy=policy, steps=cfg.ppo_steps, batch_size=cfg.ppo_batch,
                micro_batch_size=min(cfg.ppo_micro or cfg.ppo_batch, cfg.ppo_batch),
                value_model="head", **_rl_lr(cfg), **_rl_common(cfg, folder, resume_ok))
    if cfg.ppo_cap == "eval":
        over["summary_cap_quantile"] = None
    rc = build_config(RLConfig, recipe, over)
    s = train(rc)
    return {"steps": s.get("steps")}


def _rl_lr(cfg: DemoConfig) -> dict:
    return {"lr": cfg.rl_lr} if cfg.rl_lr else {}


def _grpo(cfg: DemoConfig, folder: Path, policy: str, resume_ok: bool = True) -> dict:
    """recipes/rl_grpo.yaml (ROUGE + length + repetition rewards, KL 0.04) at demo size."""
    from sumrl.config import load_recipe
    from sumrl.rl.config import RLConfig
    from sumrl.rl.trainer import train

    over = dict(policy=policy, steps=cfg.grpo_steps, batch_size=cfg.grpo_batch, samples_per_prompt=cfg.grpo_samples,
                **_rl_lr(cfg), **_rl_common(cfg, folder, resume_ok))  # micro-batches: the recipe's
    rc = build_config(RLConfig, load_recipe(GRPO_RECIPE), over)
    s = train(rc)
    return {"steps": s.get("steps")}


# ------------------------------------------------------------------------- movement and verdict


def rl_movement(train_dir: Path) -> dict | None:
    """KL to the starting policy and mean sampled length at the first and last *sampled* steps of
    an RL run (reference-trajectory steps of the last-mile recipe train on the references: their
    lengths are not the policy's), from its metrics.jsonl; None without such steps."""
    from sumrl.data.formats import read_metrics_log
    from sumrl.errors import SumrlError

    try:
        rows = [r for r in read_metrics_log(train_dir) if "objective/kl" in r
                and "completions/mean_length" in r and not r.get("completions/reference_fraction")]
    except SumrlError:
        return None
    if not rows:
        return None
    return {"steps": len(rows), "kl_first": rows[0]["objective/kl"], "kl_last": rows[-1]["objective/kl"],
            "kl_max": max(r["objective/kl"] for r in rows), "len_first": rows[0]["completions/mean_length"],
            "len_last": rows[-1]["completions/mean_length"]}


def changed_summaries(eval_a: Path, eval_b: Path) -> tuple[int, int]:
    """(test summaries that differ between two eval folders, papers both have): the plainest sign
    of whether RL changed what greedy decoding writes."""
    from sumrl.data.formats import read_predictions

    a = {r["id"]: r["prediction"] for r in read_predictions(eval_a, require_references=False)}
    b = {r["id"]: r["prediction"] for r in read_predictions(eval_b, require_references=False)}
    both = [i for i in a if i in b]
    return sum(a[i] != b[i] for i in both), len(both)


def _test(tests: list[dict], rl: str, metric: str, baseline: str = "sft") -> dict | None:
    for t in tests:
        if t["rl"] == rl and t["baseline"] == baseline:
            return next((x for x in t["tests"] if x["metric"] == metric), None)
    return None


def movement_line(name: str, mv: dict | None, changed: tuple[int, int], tests: list[dict]) -> str:
    parts = [f"{name}:"]
    if mv:
        parts.append(f"KL {mv['kl_first']:.4f} -> {mv['kl_last']:.4f} (max {mv['kl_max']:.4f}), sampled length "
                     f"{mv['len_first']:.0f} -> {mv['len_last']:.0f} tokens over {mv['steps']} sampled "
                     f"step{'s' if mv['steps'] != 1 else ''};")
    parts.append(f"{changed[0]}/{changed[1]} test summaries differ from SFT's;")
    w = _test(tests, name, "pred_words")
    if w:
        parts.append(f"words {w['mean_baseline']:.0f} -> {w['mean_rl']:.0f} (paired delta {w['delta']:+.1f}, "
                     f"p={w['p_value']:.2f})")
    return " ".join(parts)


VERDICT_METRICS = {"la_rougeL": "length-adjusted ROUGE-L", "sim_ref": "similarity to the reference"}


def verdict(tests: list[dict], changed: dict[str, tuple[int, int]], baseline: str = "sft",
            alpha: float = 0.05) -> str:
    """The demo's verdict, from the paired tests of each RL variant against ``baseline`` (pure).

    The rule: a variant *beats* SFT only if it is significantly better (two-sided paired bootstrap,
    p < ``alpha``) on both length-adjusted ROUGE-L and similarity to the reference -- the issue's
    bar; significantly worse on either is said; anything else is "no significant difference",
    with the deltas and p-values. A variant whose greedy summaries are all identical to SFT's is
    said not to have changed anything, whatever the tests say. No effect is ever implied that the
    tests do not show."""
    sentences = []
    winners = []
    for t in tests:
        if t["baseline"] != baseline:
            continue
        rl = t["rl"]
        res = {m: next((x for x in t["tests"] if x["metric"] == m), None) for m in VERDICT_METRICS}
        numbers = "; ".join(f"{VERDICT_METRICS[m]} {x['delta']:+.3f}, p={x['p_value']:.2f}"
                            for m, x in res.items() if x is not None)
        better = [m for m, x in res.items() if x is not None and x.get("better") == "better"]
        worse = [m for m, x in res.items() if x is not None and x.get("better") == "worse"]
        n_changed, n = changed.get(rl, (1, 1))
        if n_changed == 0:
            sentences.append(f"{rl} wrote the same summaries as SFT on all {n} test papers (its updates did not "
                             "change greedy decoding).")
        elif worse:
            sentences.append(f"{rl} is significantly worse than SFT on {' and '.join(VERDICT_METRICS[m] for m in worse)}"
                             f" ({numbers}).")
        elif len(better) == len(VERDICT_METRICS):
            winners.append(rl)
            sentences.append(f"{rl} beats SFT on both length-adjusted ROUGE-L and similarity ({numbers}).")
        elif better:
            sentences.append(f"{rl} is better than SFT on {VERDICT_METRICS[better[0]]} only ({numbers}), which is "
                             "not the bar of beating it.")
        else:
            sentences.append(f"{rl} does not differ significantly from SFT ({numbers}).")
    if not winners:
        sentences.append(f"No RL variant beats SFT at p < {alpha:g} on these {_n(tests)} papers: at this budget the "
                         "demo shows the pipeline, not an RL effect (docs/results.md).")
    return " ".join(sentences)


def _n(tests: list[dict]) -> int:
    return max((t["n"] for t in tests), default=0)
