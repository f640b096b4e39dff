"""SFT training throughput and peak memory (not a test): tokens/s, peak RSS and MFU per config.

    python benchmarks/bench_sft.py                         # default model, 512/2048/8192, full grid
    python benchmarks/bench_sft.py --lengths 512 2048 --modes lora --precision bf16

What one configuration measures (each in a fresh subprocess, so that the peak resident set size
``ru_maxrss`` belongs to that configuration alone): the model (``--model``, default
SmolLM2-135M-Instruct) as ``sumrl sft`` builds it (LoRA r=16 on all projections, or full),
activation checkpointing on/off, fp32 or bf16 autocast, one packed row of ``L`` tokens (``L - 256``
prompt tokens, 256 summary tokens: the SFT shape of long-document summarisation) through the same
loss module (trunk + chunked cross-entropy) and an AdamW step. ``--warmup`` untimed steps, then
``--steps`` timed steps.

MFU = 6 x parameters x tokens/s / matmul ceiling, where the ceiling is the best
``torch.matmul`` FLOP/s of square ``--matmul-n`` matrices measured here, on this machine, in
the configuration's precision. The 6N rule counts forward + backward of every weight; it ignores
attention FLOPs and the recomputation of checkpointing (so MFU, not hardware utilisation), and
LoRA, which skips weight gradients, does ~4N of real work for the same 6N credit.

Expensive configurations are skipped, with the reason in the table, when the step time or peak
memory extrapolated (linearly in L) from the same configuration at a shorter length exceeds
``--max-step-seconds`` / ``--max-memory-gb``. Peak memory is reported with its slope over
sequence length (MB per 1k tokens, least squares over the measured lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from itertools import product
from typing import Any

TARGET_TOKENS = 256


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_ceiling(dtype_name: str, n: int, reps: int = 5) -> float:
    """Best FLOP/s of an n x n matmul in the given dtype (what the cores can do at best)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def run_one(spec: dict) -> dict:
    """One configuration (in its own process)."""
    import torch

    from sumrl.training.config import SFTConfig
    from sumrl.training.data import TrainSequence
    from sumrl.training.loss import CausalLMLoss
    from sumrl.training.optim import build_optimizer, trainable
    from sumrl.training.packing import collate_packed
    from sumrl.training.sft import build_model

    torch.manual_seed(0)
    cfg = SFTConfig(model=spec["model"], lora=spec["mode"] == "lora", gradient_checkpointing=spec["ckpt"],
                    bf16=spec["precision"] == "bf16", max_seq_len=max(spec["length"], 64), max_target_tokens=32)
    model, tok, _ = build_model(cfg)
    L = spec["length"]
    ids = torch.randint(100, len(tok) - 1, (L,)).tolist()
    batch = collate_packed([TrainSequence(ids, L - min(TARGET_TOKENS, L // 2))])
    loss_mod = CausalLMLoss(model, chunk_size=512, bf16=cfg.bf16)
    params = trainable(model)
    opt = build_optimizer(params, lr=1e-5)
    n_params = sum(p.numel() for p in model.parameters())
    base_rss = rss_mb()

    def step() -> float:
        s, n = loss_mod(**batch)
        (s / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(s / n)

    for _ in range(spec["warmup"]):
        step()
    t = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    dt = (time.perf_counter() - t) / spec["steps"]
    return {"params": n_params, "trainable": sum(p.numel() for _, p in params), "step_s": dt,
            "tokens_per_s": L / dt, "peak_rss_mb": peak_rss_mb(), "model_rss_mb": base_rss, "loss": loss,
            "torch_threads": torch.get_num_threads()}


def child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["?"])[-1][:120]
    return {"skipped": f"failed (exit {p.returncode}: {tail})"}


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope (MB per 1k tokens) of peak memory over length."""
    if len(points) < 2:
        return None
    xs, ys = [x / 1000 for x, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (dropped for steps over "
                                                          "--no-warmup-above seconds)")
    ap.add_argument("--no-warmup-above", type=float, default=60.0)
    ap.add_argument("--max-step-seconds", type=float, default=600.0,
                    help="skip a config whose step time, extrapolated from a shorter length, exceeds this")
    ap.add_argument("--max-memory-gb", type=float, default=12.0,
                    help="skip a config whose peak memory, extrapolated from a shorter length, exceeds this")
    ap.add_argument("--configs", nargs="+", metavar="L:MODE:CKPT:PREC",
                    help="explicit configurations (e.g. 2048:lora:on:bf16) instead of the grid of the four "
                         "options above")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration before giving up")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0

    import torch

    ceiling = {p: matmul_ceiling(p, args.matmul_n) for p in args.precision}
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    print("# matmul ceiling (n=%d): %s" % (args.matmul_n, ", ".join(f"{p} {c / 1e9:.1f} GFLOP/s" for p, c in ceiling.items())),
          flush=True)
    results: list[dict] = []
    if args.configs:
        grid = []
        for c in args.configs:
            parts = c.split(":")
            if (len(parts) != 4 or not parts[0].isdigit() or parts[1] not in ("lora", "full")
                    or parts[2] not in ("on", "off") or parts[3] not in ("fp32", "bf16")):
                ap.error(f"--configs {c!r}: expected LENGTH:lora|full:on|off:fp32|bf16, e.g. 2048:lora:on:bf16")
            grid.append((int(parts[0]), parts[1], parts[2], parts[3]))
        grid.sort(key=lambda g: g[0])
        for p in {g[3] for g in grid} - set(ceiling):
            ceiling[p] = matmul_ceiling(p, args.matmul_n)
    else:
        grid = list(product(sorted(args.lengths), args.modes, args.checkpointing, args.precision))
    for L, mode, ck, prec in grid:
        key = (mode, ck, prec)
        prev = [r for r in results if (r["mode"], r["ckpt"], r["precision"]) == key and "step_s" in r]
        row: dict[str, Any] = {"length": L, "mode": mode, "ckpt": ck, "precision": prec}
        est_s = est_mb = None
        if prev:
            p = prev[-1]
            est_s = p["step_s"] * L / p["length"]
            if len(prev) >= 2:  # two points: extrapolate the measured line, else scale the activations
                s = slope([(r["length"], r["peak_rss_mb"]) for r in prev])
                est_mb = prev[-1]["peak_rss_mb"] + s * (L - prev[-1]["length"]) / 1000
            else:
                est_mb = p["model_rss_mb"] + (p["peak_rss_mb"] - p["model_rss_mb"]) * L / p["length"]
        if est_s is not None and est_s > args.max_step_seconds:
            row["skipped"] = f"~{est_s:.0f} s/step extrapolated > {args.max_step_seconds:.0f} s budget"
        elif est_mb is not None and est_mb > args.max_memory_gb * 1024:
            row["skipped"] = f"~{est_mb / 1024:.1f} GB extrapolated > {args.max_memory_gb:.0f} GB budget"
        else:
            warm = 0 if (est_s or 0) > args.no_warmup_above else args.warmup
            steps = args.steps if (est_s or 0) <= args.no_warmup_above else 1
            spec = {"model": args.model, "length": L, "mode": mode, "ckpt": ck == "on", "precision": prec,
                    "warmup": warm, "steps": steps}
            row.update(child(spec, timeout=args.timeout))
            row["warmup"], row["steps"] = warm, steps
            if "tokens_per_s" in row:
                row["mfu"] = 6 * row["params"] * row["tokens_per_s"] / ceiling[prec]
        results.append(row)
        print(_fmt_row(row), flush=True)

    print()
    print(table(results, ceiling))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ceiling": ceiling, "results": results}, f, indent=2)
    return 0


def _fmt_row(r: dict) -> str:
    head = f"L={r['length']:>5} {r['mode']:>4} ckpt={r['ckpt']:<3} {r['precision']}"
    if "skipped" in r:
        return f"{head}: skipped ({r['skipped']})"
    return (f"{head}: {r['tokens_per_s']:.0f} tok/s, {r['step_s']:.1f} s/step, peak {r['peak_rss_mb']:.0f} MB, "
            f"MFU {100 * r['mfu']:.1f}%")


def table(results: list[dict], ceiling: dict) -> str:
    lines = ["| seq len | mode | checkpointing | precision | tokens/s | s/step | peak RSS (MB) | MFU | note |",
             "|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['length']} | {r['mode']} | {r['ckpt']} | {r['precision']} | - | - | - | - | "
                         f"skipped: {r['skipped']} |")
        else:
            note = f"{r['steps']} timed step(s), {r['warmup']} warm-up"
            lines.append(f"| {r['length']} | {r['mode']} | {r['ckpt']} | {r['precision']} | {r['tokens_per_s']:.0f} "
                         f"| {r['step_s']:.1f} | {r['peak_rss_mb']:.0f} | {100 * r['mfu']:.1f}% | {note} |")
    lines.append("")
    lines.append("Peak memory slope over sequence length (least squares over measured lengths):")
    groups: dict[tuple, list] = {}
    for r in results:
        if "peak_rss_mb" in r:
            groups.setdefault((r["mode"], r["ckpt"], r["precision"]), []).append((r["length"], r["peak_rss_mb"]))
    for (mode, ck, prec), pts in groups.items():
        s = slope(pts)
        desc = f"{s:.0f} MB per 1k tokens" if s is not None else "one length only"
        lines.append(f"- {mode}, checkpointing {ck}, {prec}: {desc} "
                     f"({', '.join(f'{L}: {m:.0f} MB' for L, m in pts)})")
    lines.append("")
    lines.append("Matmul ceiling: " + ", ".join(f"{p} {c / 1e9:.1f} GFLOP/s" for p, c in ceiling.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
