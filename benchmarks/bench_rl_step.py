"""Time one RL step per algorithm and prompt length on the default model and split it into stages.

    python benchmarks/bench_rl_step.py --algos ppo grpo --prompts 4 --new-tokens 48 --prompt-tokens 256
    python benchmarks/bench_rl_step.py --algos grpo --prompts 4 --group-size 4 --new-tokens 64 \\
        --prompt-tokens 512 2048 4096 8192
    python benchmarks/bench_rl_step.py --smoke --policy PATH   # seconds, tiny sizes (tests)

Each (algorithm, prompt length) runs ``--steps`` outer steps (default 2: the first one also pays
one-off costs such as tokenising the documents) through the public ``sumrl.rl.trainer.train`` in
its own subprocess (so its peak RSS is its own), with metric rewards (rouge, length). The table
reports the *last* step's stage times from its metrics: generation (sampling, plus the guide for
guided algorithms), scoring (rewards), forward (old / reference log-probs and values, no grad)
and training (PPO epochs with backward), and the block's peak RSS (peak CUDA memory on a GPU),
also split by stage: the stage functions are wrapped so that the kernel's peak-RSS counter (VmHWM,
reset through /proc/self/clear_refs) is read and reset around each (Linux; "other" = model
loading, advantages, logging).
For each algorithm measured at two or more lengths, a least-squares line over the lengths gives
the slope of peak memory and of step time per 1,000 prompt tokens (linear memory in prompt
length is the goal of issue #13; a super-linear curve shows up as slopes growing with length).

GRPO/RLOO use ``prompts / group-size`` prompts x ``group-size`` samples (default 2) so every
algorithm trains on the same number of sequences. Guided algorithms need ``--guide``. Prompt
lengths above the model's context minus ``--new-tokens`` are capped to it (and printed so).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULT = "BENCH_RESULT "
STAGES = ("generate", "score", "forward", "train")


def _hwm_kib() -> int | None:
    """The process's peak resident set size since the last :func:`_reset_hwm` (VmHWM, KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS (so each stage gets its own peak)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StagePeaks:
    """Peak RSS per RL stage: the stage functions the trainer calls are wrapped so that the peak
    is read and reset around each call (Linux only; elsewhere the dict stays empty). On a GPU the
    CUDA allocator's peak is tracked the same way."""

    def __init__(self) -> None:
        self.rss: dict[str, float] = {}
        self.cuda: dict[str, float] = {}

    def _close(self, stage: str) -> None:
        import torch

        kib = _hwm_kib()
        if kib is not None:
            self.rss[stage] = max(self.rss.get(stage, 0.0), kib / 2 ** 20)
        if torch.cuda.is_available():
            self.cuda[stage] = max(self.cuda.get(stage, 0.0), torch.cuda.max_memory_allocated() / 2 ** 30)

    def _reset(self) -> None:
        import torch

        _reset_hwm()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _open(self) -> None:
        self._close("other")  # whatever ran since the last stage (model loading, advantages, logging)
        self._reset()

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        fn = getattr(owner, attr)

        def wrapped(*a, **kw):
            self._open()
            try:
                return fn(*a, **kw)
            finally:
                self._close(stage)
                self._reset()

        setattr(owner, attr, wrapped)


def _block(s: dict[str, Any]) -> dict[str, Any]:
    import torch

    from sumrl.config import build_config
    from sumrl.rl.config import GROUP_ALGOS, RLConfig
    from sumrl.rl import guided, rollout
    from sumrl.rl.trainer import RLTrainer, train

    peaks = StagePeaks()
    # the functions stage by stage (train() imports them at call time, so patching the modules works)
    peaks.wrap(guided, "_policy_sample", "generate")
    peaks.wrap(rollout, "score_rollout", "score")
    peaks.wrap(RLTrainer, "forward_rollout", "forward")
    peaks.wrap(RLTrainer, "update", "train")
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    group = s["algo"] in GROUP_ALGOS
    g = s["group_size"]
    extra = {} if s.get("bf16") is None else {"bf16": s["bf16"]}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(RLConfig, None, dict(
            algo=s["algo"], policy=s["policy"], data=s["data"], reward=s["reward"], out=os.path.join(tmp, s["algo"]),
            steps=s["steps"], batch_size=max(1, s["prompts"] // g) if group else s["prompts"],
            samples_per_prompt=g if group else None, max_new_tokens=s["new_tokens"],
            max_prompt_tokens=s["prompt_tokens"], micro_batch_size=s["prompts"], guide=s.get("guide"),
            progress=False, tensorboard=False, sample_every=0, save_every=10_000, eval_every=0,
            temperature=0.7, no_eos_penalty=-1.0, **extra))
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
    m = summary["last"]
    out = {k: float(m.get(k, 0.0)) for k in ("time/generate", "time/generate_guide", "time/score", "time/forward",
                                            "time/train", "time/step", "completions/mean_length")}
    out["wall"] = wall
    peaks._close("other")
    # ru_maxrss is reset with VmHWM on Linux: the process peak is the largest stage peak
    out["peak_rss_gib"] = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, *peaks.rss.values()])
    out["stage_rss_gib"] = dict(peaks.rss)
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = max(peaks.cuda.values(), default=torch.cuda.max_memory_allocated() / 2 ** 30)
        out["stage_cuda_gib"] = dict(peaks.cuda)
    return out


def _run(spec: dict[str, Any], in_process: bool) -> dict[str, Any]:
    if in_process:
        return _block(spec)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                       capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith(RESULT)]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{spec['algo']} at {spec['prompt_tokens']} prompt tokens failed (exit {p.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT):])


def slope_per_1k(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs``, per 1,000 units of x."""
    import numpy as np

    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0]) * 1000.0


def report(rows: list[dict[str, Any]]) -> None:
    """Print the stage table, the per-stage peak memory and the slopes per 1k prompt tokens."""
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    print("| algo | prompt tokens | generate (s) | of which guide | score (s) | forward (s) | train (s) | step (s) | "
          "mean length | peak RSS (GiB) | run wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        capped = f" (asked {r['asked']})" if r["asked"] != r["prompt_tokens"] else ""
        mem = f"{r['peak_rss_gib']:.2f}" + (f" (CUDA {r['peak_cuda_gib']:.2f})" if "peak_cuda_gib" in r else "")
        print(f"| {r['algo']} | {r['prompt_tokens']}{capped} | {r['time/generate']:.2f} | {r['time/generate_guide']:.2f} | "
              f"{r['time/score']:.2f} | {r['time/forward']:.2f} | {r['time/train']:.2f} | {r['time/step']:.2f} | "
              f"{r['completions/mean_length']:.1f} | {mem} | {r['wall']:.1f} |")
    if any(r.get("stage_rss_gib") for r in rows):
        print()
        print("Peak RSS by stage (GiB; the largest is the run's peak; other = model loading, advantages, logging):")
        print("| algo | prompt tokens | generate | score | forward | train | other |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            st = r.get("stage_rss_gib") or {}
            print(f"| {r['algo']} | {r['prompt_tokens']} | "
                  + " | ".join(f"{st[k]:.2f}" if k in st else "-" for k in (*STAGES, "other")) + " |")
    slopes = []
    for algo in algos:
        rs = [r for r in rows if r["algo"] == algo]
        if len({r["prompt_tokens"] for r in rs}) >= 2:
            xs = [r["prompt_tokens"] for r in rs]
            key = "peak_cuda_gib" if all("peak_cuda_gib" in r for r in rs) else "peak_rss_gib"
            slopes.append((algo, slope_per_1k(xs, [r[key] for r in rs]), key,
                           slope_per_1k(xs, [r["time/step"] for r in rs])))
    if slopes:
        print()
        for algo, mem_slope, key, t_slope in slopes:
            print(f"- {algo}: {mem_slope:.3f} GiB ({key.split('_')[1]}) and {t_slope:.2f} s per step per 1k prompt tokens "
                  "(least squares over the lengths above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--algos", nargs="+", default=["ppo", "grpo"])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--guide", default=None, help="guide model for ppo++ / aggrevated / d2lols")
    ap.add_argument("--data", default="scisummnet")
    ap.add_argument("--reward", default="rouge,length")
    ap.add_argument("--prompts", type=int, default=4, help="sequences per step")
    ap.add_argument("--group-size", type=int, default=2, help="grpo/rloo samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--bf16", default=None, help="auto | true | false (default: sumrl rl's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (2 sequences, 8 new tokens, prompts 64 and 128, "
                                                         "2 steps, in this process): checks that everything runs")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print the tables of rows written earlier with --json (e.g. lengths run as separate "
                         "commands) and exit")
    args = ap.parse_args(argv)
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(open(f).read())]
        print(f"rows merged from {', '.join(args.merge)}")
        report(sorted(rows, key=lambda r: (r["algo"], r["prompt_tokens"])))
        return 0
    if args.worker:
        print(RESULT + json.dumps(_block(json.loads(args.worker))), flush=True)
        return 0
    if args.smoke:
        args.prompts, args.group_size, args.new_tokens, args.prompt_tokens, args.steps = 2, 2, 8, [64, 128], 2

    import torch

    from sumrl.config import parse_auto_bool
    from sumrl.models.loading import context_length_of_spec

    bf16 = None if args.bf16 is None else parse_auto_bool(args.bf16, "--bf16")
    if bf16 is not None and not isinstance(bf16, bool):
        # sumrl rl's config may still take a bool: resolve here, once, and say so
        from sumrl.models.precision import precision_line, resolve_bf16

        bf16, why = resolve_bf16(bf16)
        print(precision_line("bench_rl_step", bf16, why), flush=True)
    ctx = context_length_of_spec(args.policy)
    rows = []
    for algo in args.algos:
        for L in args.prompt_tokens:
            eff = L if ctx is None else min(L, ctx - args.new_tokens)
            spec = dict(algo=algo, policy=args.policy, guide=args.guide, data=args.data, reward=args.reward,
                        prompts=args.prompts, group_size=args.group_size, new_tokens=args.new_tokens,
                        prompt_tokens=eff, steps=args.steps, bf16=bf16, threads=args.threads)
            r = _run(spec, in_process=args.smoke)
            r.update(algo=algo, prompt_tokens=eff, asked=L)
            rows.append(r)
            print(f"  {algo} at {eff} prompt tokens: step {r['time/step']:.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB",
                  flush=True)
    print()
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"torch threads {args.threads or torch.get_num_threads()}, policy {args.policy}, {args.prompts} sequences x "
          f"<= {args.new_tokens} new tokens, rewards {args.reward}, bf16 {'rl default' if bf16 is None else bf16}"
          + (" (smoke: tiny sizes, in one process: memory not meaningful)" if args.smoke else ""))
    report(rows)
    if args.json:
        from sumrl.utils.io import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
