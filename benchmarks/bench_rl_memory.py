"""Peak memory of the RL passes over one long prompt x G samples, each in a fresh process.

    python benchmarks/bench_rl_memory.py --lengths 1024 2048 4096 --parts train --checkpointing on off
    python benchmarks/bench_rl_memory.py --smoke --policy PATH

Parts (the default model + LoRA r16 on all projections, float32, one prompt of exactly L random
tokens, ``--samples`` completions of ``--new-tokens`` random tokens):

* ``gen``: :func:`sumrl.generation.sampler.sample_groups` (prefill in ``--prefill-chunk`` chunks,
  merged LoRA, no end token: every row writes ``--new-tokens``);
* ``nograd``: the shared-prompt no-grad log-prob pass (:func:`sumrl.models.grouped.grouped_token_logprobs`,
  prompt in ``--prefill-chunk`` chunks): the old / reference log-probs;
* ``train``: the shared-prompt training forward + backward of a log-prob loss, with activation
  checkpointing on or off (:func:`sumrl.models.grouped.activation_checkpointing`).

Each row: the peak RSS of the process during the part (VmHWM, reset after loading the model; Linux),
the model-loaded RSS before it, and the seconds the part took. ``--mmap-threshold`` sets
``SUMRL_MMAP_THRESHOLD`` for the subprocess (0 = glibc's default heap behaviour; default: sumrl's
1 MiB, see sumrl.utils.memory), so the effect of the allocator setting can be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULT = "MEM_RESULT "


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20  # KiB -> GiB
    return float("nan")


def _worker(spec: dict) -> dict:
    import torch

    from sumrl.generation.sampler import sample_groups
    from sumrl.models.grouped import activation_checkpointing, grouped_token_logprobs
    from sumrl.models.loading import load_model
    from sumrl.models.lora import add_lora
    from sumrl.utils.memory import cap_heap_retention

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    capped = cap_heap_retention()
    model, tok = load_model(spec["policy"], dtype="float32")
    model = add_lora(model, r=16, alpha=32)
    L, G, T = spec["length"], spec["samples"], spec["new_tokens"]
    g = torch.Generator().manual_seed(0)
    hi = min(len(tok), model.get_input_embeddings().weight.shape[0])
    q = torch.randint(10, hi, (1, L), generator=g)
    r = torch.randint(10, hi, (G, T), generator=g)
    qm, rm = torch.ones_like(q), torch.ones_like(r)
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    t0 = time.perf_counter()
    part = spec["part"]
    if part == "gen":
        sample_groups(model, [q[0].tolist()], group_size=G, max_new_tokens=T, temperature=0.7, stop_ids=[],
                      pad_id=0, prefill_chunk=spec["prefill_chunk"], merge_lora=True)
    elif part == "nograd":
        with torch.no_grad():
            grouped_token_logprobs(model, q, qm, r, rm, prefill_chunk=spec["prefill_chunk"])
    else:
        model.train()
        with activation_checkpointing(model, spec["checkpointing"]):
            lp = grouped_token_logprobs(model, q, qm, r, rm)["logprobs"]
            (-lp.mean()).backward()
    return {"seconds": time.perf_counter() - t0, "base_gib": base, "peak_gib": _status("VmHWM"),
            "heap_capped": capped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="default")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--parts", nargs="+", default=["train"], choices=["gen", "nograd", "train"])
    ap.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"],
                    help="train part: activation checkpointing settings to measure")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-chunk", type=int, default=1024)
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="SUMRL_MMAP_THRESHOLD for the workers (0 = glibc's default)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (length 32, 2 samples, 4 new tokens)")
    args = ap.parse_args(argv)
    if args.worker:
        print(RESULT + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench_rl_memory reads /proc (Linux only)")
    if args.smoke:
        args.lengths, args.samples, args.new_tokens, args.prefill_chunk = [32], 2, 4, 16
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["SUMRL_MMAP_THRESHOLD"] = str(args.mmap_threshold)
    rows = []
    for part in args.parts:
        for ck in (args.checkpointing if part == "train" else ["-"]):
            for L in args.lengths:
                spec = dict(policy=args.policy, length=L, part=part, checkpointing=ck == "on", samples=args.samples,
                            new_tokens=args.new_tokens, prefill_chunk=args.prefill_chunk, threads=args.threads)
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                   capture_output=True, text=True, env=env)
                lines = [x for x in p.stdout.splitlines() if x.startswith(RESULT)]
                if p.returncode != 0 or not lines:
                    raise SystemExit(f"{part} at {L} tokens failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
                r = {**json.loads(lines[-1][len(RESULT):]), "part": part, "checkpointing": ck, "length": L}
                rows.append(r)
                print(f"  {part} {L} checkpointing {ck}: peak {r['peak_gib']:.2f} GiB ({r['seconds']:.1f} s)", flush=True)
    print()
    print(f"policy {args.policy} + LoRA r16, float32, 1 prompt x {args.samples} samples x {args.new_tokens} tokens, "
          f"prefill chunk {args.prefill_chunk}, heap cap {'glibc default' if args.mmap_threshold == 0 else 'on'}")
    print("| part | checkpointing | prompt tokens | RSS before (GiB) | peak RSS (GiB) | peak - before | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['checkpointing']} | {r['length']} | {r['base_gib']:.2f} | {r['peak_gib']:.2f} | "
              f"{r['peak_gib'] - r['base_gib']:.2f} | {r['seconds']:.1f} |")
    if args.json:
        from sumrl.utils.io import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
