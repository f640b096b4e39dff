"""The `sumrl demo` speed-ups of 2026-11-30, stage by stage, old settings against new, in *process
CPU seconds* at one thread (robust to a shared machine's load, unlike wall time; on a quiet 2-core
machine wall time is about CPU time / 2). Reads a finished default-preset demo folder for the SFT
adapter, the RM and the six systems' predictions (docs/results.md section 1).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_stages.py score --demo runs/demo-s5
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_stages.py gen                     # batch 16 vs 8
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_stages.py sft --steps 4           # checkpointing on/off
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_stages.py ppo --demo runs/demo-s5 --steps 1
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_stages.py rm --steps 3            # 160- vs 256-token window

* ``score``: the six systems' predictions scored one after another in one process (as the demo
  does); the first computes the sources' and references' embeddings, the others reuse them. Checks
  that sim_ref, sim_src and rouge1_f equal the demo folder's.
* ``gen``: greedy summaries of the demo's 16 test papers with the base model, one batch of 16 then
  two of 8 (``--reps`` times); checks that the summaries are the same.
* ``sft``: the demo's SFT stage on 60 training examples, no validation, checkpointing on then off;
  CPU seconds per step (step 1 includes set-up).
* ``ppo``: the demo's PPO stage from the folder's SFT adapter and RM, the old settings (one pass of
  4 rows, checkpointed, the recipe's 246-token cap) then the new (passes of 2 rows, 160-token cap);
  CPU seconds of set-up + the steps.
* ``rm``: the demo's RM stage (``--steps`` training steps, the held-out evaluation on 16 papers and
  the normalisation set) with the 160-token summary window then the recipe's 256.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def _cfg(**over):
    from sumrl.demo import DemoConfig

    return dataclasses.replace(DemoConfig(preset="default", bf16="false"), **over).resolved()


def bench_score(demo: Path) -> None:
    from sumrl.data.formats import read_predictions
    from sumrl.evaluation.harness import score_rows

    for name, clean in (("eval_base", False), ("eval_base", True), ("eval_sft", False), ("eval_sft", True),
                        ("eval_ppo_lastmile", False), ("eval_grpo", False)):
        rows = read_predictions(demo / name / "predictions.jsonl")
        for r in rows:
            r["prediction"] = r["raw_prediction"]
            r.pop("metrics", None)
        c = time.process_time()
        score_rows(rows, cleanup=clean)
        dc = time.process_time() - c
        want = {r["id"]: r["metrics"] for r in
                read_predictions(demo / f"{name}{'_cleaned' if clean else ''}" / "predictions.jsonl")}
        same = all(r["metrics"][k] == want[r["id"]][k] for r in rows for k in ("sim_ref", "sim_src", "rouge1_f"))
        print(f"{name}{' cleaned' if clean else ''}: {dc:.1f} CPU s; metrics equal the folder's: {same}", flush=True)


def bench_gen(reps: int) -> None:
    from sumrl.data import load_data
    from sumrl.generation.summarize import GenerationSettings, summarize
    from sumrl.models.loading import load_model

    cfg = _cfg()
    ex = load_data(cfg.data, "test", limit=cfg.n_test, seed=cfg.seed)
    model, tok = load_model(cfg.model)
    ref = None
    for rep in range(reps):
        for bs in (16, 8):
            s = GenerationSettings(max_new_tokens=cfg.max_new_tokens, batch_size=bs, max_input_tokens=cfg.max_input_tokens,
                                   no_repeat_ngram=cfg.no_repeat_ngram, progress=False)
            c, t = time.process_time(), time.perf_counter()
            texts = [o.text for o in summarize(model, tok, ex, s)]
            dc, dt = time.process_time() - c, time.perf_counter() - t
            ref = ref or texts
            same = sum(a == b for a, b in zip(ref, texts))
            print(f"rep {rep} batch {bs}: {dc:.1f} CPU s ({dt:.1f} s wall); summaries equal to the first: "
                  f"{same}/{len(texts)}", flush=True)


def _per_step(kind: str, variants: list[tuple[str, dict]], demo: Path | None, steps: int) -> None:
    from sumrl import demo as D
    from sumrl.rl import trainer as rl_mod
    from sumrl.training import sft as sft_mod

    marks: list[tuple[float, float]] = []

    def cb(step, metrics):
        marks.append((time.process_time(), time.perf_counter()))

    orig_sft, orig_rl = sft_mod.train, rl_mod.train
    sft_mod.train = lambda c: orig_sft(dataclasses.replace(c, eval_every=0, early_stopping_patience=0, save_every=1000,
                                                           limit=60, max_loss_ratio=0.0), callbacks=[cb])
    rl_mod.train = lambda c: orig_rl(dataclasses.replace(c, save_every=1000), callbacks=[cb])
    try:
        for name, over in variants:
            out = Path("runs/bench_demo_stages") / f"{kind}-{name}"
            marks[:] = [(time.process_time(), time.perf_counter())]
            if kind == "sft":
                D.SFT_CHECKPOINT_TOKENS = over.pop("_threshold")
                D._sft(_cfg(sft_steps=steps, **over), out, resume_ok=False)
            else:
                D._ppo(_cfg(ppo_steps=steps, **over), out, str(demo / "sft"), demo / "rm", resume_ok=False)
            cpu = [round(marks[i][0] - marks[i - 1][0], 1) for i in range(1, len(marks))]
            print(f"{kind} {name}: CPU s per step (the first with set-up) {cpu}; total {sum(cpu):.1f}", flush=True)
    finally:
        sft_mod.train, rl_mod.train = orig_sft, orig_rl


def bench_rm(steps: int) -> None:
    from sumrl import demo as D

    for name, cap in (("window 160", "eval"), ("window 256", "data")):
        c, t = time.process_time(), time.perf_counter()
        m = D._rm(_cfg(rm_steps=steps, ppo_cap=cap), Path("runs/bench_demo_stages") / f"rm-{cap}")
        print(f"rm {name}: {time.process_time() - c:.1f} CPU s ({time.perf_counter() - t:.1f} s wall), held-out "
              f"accuracy {m.get('heldout_accuracy_mean')}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["score", "gen", "sft", "ppo", "rm"])
    ap.add_argument("--demo", default="runs/demo-s5", help="a finished default-preset demo folder (score, ppo)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (sft 4, ppo 1, rm 3)")
    ap.add_argument("--reps", type=int, default=1, help="gen: repetitions of the A/B pair")
    a = ap.parse_args()
    demo = Path(a.demo)
    if a.what == "score":
        bench_score(demo)
    elif a.what == "gen":
        bench_gen(a.reps)
    elif a.what == "sft":
        _per_step("sft", [("checkpointing", {"_threshold": 0}), ("no-checkpointing", {"_threshold": 10**9})], None,
                  a.steps or 4)
    elif a.what == "ppo":
        _per_step("ppo", [("old", {"ppo_micro": 4, "ppo_cap": "data"}), ("new", {"ppo_micro": 2, "ppo_cap": "eval"})],
                  demo, a.steps or 1)
    else:
        bench_rm(a.steps or 3)


if __name__ == "__main__":
    main()
