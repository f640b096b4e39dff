"""sumrl GRPO against TRL's ``GRPOTrainer`` on the same work, step for step (issue #13).

    python benchmarks/bench_rl_vs_trl.py                       # 512 (4 prompts x 4) and 4096 (1 x 4)
    python benchmarks/bench_rl_vs_trl.py --lengths 512 --rounds 3 --steps 3
    python benchmarks/bench_rl_vs_trl.py --smoke --policy PATH # seconds, on a tiny model (tests)

Same model (``--policy``, default: the embedded SmolLM2-135M), same data (built-in ScisummNet train
documents, each prompt cut to exactly ``--prompt-tokens`` policy tokens with sumrl's own truncation
and chat template; TRL gets the decoded prompt text), the same number of prompts and samples
(4 x 4 at prompt lengths below 2,048, 1 x 4 from 2,048 on, or ``--prompts``), the same new-token
cap, sampling temperature and full-distribution sampling (top_k 0, top_p 1), LoRA r16 / alpha 32
on all attention and MLP projections, the same precision (``--bf16 auto`` resolved once by
:func:`sumrl.models.precision.resolve_bf16` and given to both), no KL (sumrl ``kl_coef 0``
without reference pass, TRL ``beta 0``), one PPO iteration per rollout, one optimizer step per
rollout (all completions in one micro-batch), the same rewards (sumrl's ``--reward`` scorers, called
from a TRL reward function). Activation checkpointing: sumrl's default (off); TRL's own default
(on) at every length (``--trl-checkpointing`` overrides): without it TRL's 512-token block was killed
for memory on the 24 GiB development machine (measured 2026-11-30, as in the issue's first run).

Each (system, length) block runs in its own subprocess (clean peak RSS, no shared caches), blocks
alternate A B A B for ``--rounds`` rounds, each block runs ``--steps`` steps and its first step is
discarded (allocator warm-up, first-call kernel selection). Printed per length: seconds per step
(mean over the kept steps, with min-max), TRL / sumrl ratio, tokens per second
(``prompts x samples x (prompt tokens + mean completion length) / s per step``), peak RSS of the
block process (and peak CUDA memory on a GPU), mean completion length.

TRL is an optional extra (``pip install -e '.[bench]'``); sumrl never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULT = "BENCH_RESULT "


# --------------------------------------------------------------------------------------- workers
def _peak() -> dict[str, float]:
    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}  # KiB on Linux
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def _sumrl_block(s: dict[str, Any]) -> dict[str, Any]:
    from sumrl.config import build_config
    from sumrl.data.formats import read_metrics_log
    from sumrl.rl.config import RLConfig
    from sumrl.rl.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(RLConfig, None, dict(
            algo="grpo", policy=s["policy"], data=s["data"], reward=s["reward"], out=os.path.join(tmp, "rl"),
            steps=s["steps"], batch_size=s["prompts"], samples_per_prompt=s["samples"],
            max_new_tokens=s["new_tokens"], max_prompt_tokens=s["prompt_tokens"],
            micro_batch_size=s["prompts"] * s["samples"], temperature=s["temperature"], top_p=1.0,
            kl_coef=0.0, reference_kl=False, ppo_epochs=1, lora=True, lora_r=16, lora_alpha=32, lr=5e-5,
            bf16=s["bf16"], seed=s["seed"], progress=False, tensorboard=False, sample_every=0, save_every=10_000,
            eval_every=0))
        train(cfg)
        rows = read_metrics_log(os.path.join(tmp, "rl"), missing_ok=False)
    rows = [r for r in rows if "time/step" in r]
    return {"step_s": [float(r["time/step"]) for r in rows],
            "mean_len": [float(r.get("completions/mean_length", 0.0)) for r in rows],
            "stages": {k: [float(r.get(k, 0.0)) for r in rows] for k in ("time/generate", "time/forward", "time/train")},
            **_peak()}


def _trl_block(s: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sumrl.data import load_data
    from sumrl.generation.summarize import eos_ids
    from sumrl.models.loading import load_model
    from sumrl.models.lora import default_target_modules
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.registry import build_reward
    from sumrl.rl.rollout import encode_prompt_ids

    model, tok = load_model(s["policy"], dtype="float32")
    n_rows = s["prompts"] * s["steps"]
    examples = load_data(s["data"], "train", require_summary=True, seed=s["seed"])[: max(n_rows, 1)]
    rows = []
    for ex in examples:
        ids = encode_prompt_ids(tok, ex.document, ex.query, max_prompt_tokens=s["prompt_tokens"])
        rows.append({"prompt": tok.decode(ids), "document": ex.document, "reference": ex.reference})
    reward = build_reward(s["reward"])

    stops = set(eos_ids(model, tok))

    def sumrl_reward(prompts, completions, completion_ids, document, reference, **_):
        # the reward contract: token ids without the end token, text = their decoding
        cut, fin = [], []
        for c in completion_ids:
            c = [int(t) for t in c]
            k = next((i for i, t in enumerate(c) if t in stops), None)
            cut.append(c if k is None else c[:k])
            fin.append(k is not None)
        inp = RewardInput(documents=list(document), summaries=[tok.decode(c, skip_special_tokens=True) for c in cut],
                          references=[[r] for r in reference], queries=[None] * len(cut), token_ids=cut,
                          tokenizer=tok, finished=fin)
        return [float(x) for x in reward(inp).totals()]

    times: list[float] = []
    lens: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lens.append(float(logs["completions/mean_length"]))

    ckpt = s["trl_checkpointing"]
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=s["prompts"] * s["samples"], num_generations=s["samples"],
            steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1, beta=0.0,
            max_completion_length=s["new_tokens"], temperature=s["temperature"], top_p=1.0, top_k=0,
            learning_rate=5e-5, max_steps=s["steps"], logging_steps=1, save_strategy="no", report_to="none",
            bf16=bool(s["bf16"]), use_cpu=not torch.cuda.is_available(), disable_dropout=True, seed=s["seed"],
            dataloader_num_workers=0, **({} if ckpt == "default" else {"gradient_checkpointing": ckpt == "on"}))
        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                              target_modules=default_target_modules(model))
        trainer = GRPOTrainer(model=model, reward_funcs=[sumrl_reward], args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, peft_config=peft_cfg, callbacks=[Timer()])
        used_ckpt = bool(trainer.args.gradient_checkpointing)
        trainer.train()
    return {"step_s": times, "mean_len": lens, "trl_gradient_checkpointing": used_ckpt, **_peak()}


def worker(spec: str) -> int:
    s = json.loads(spec)
    if s.get("threads"):
        import torch

        torch.set_num_threads(int(s["threads"]))
    res = _sumrl_block(s) if s["system"] == "sumrl" else _trl_block(s)
    print(RESULT + json.dumps(res), flush=True)
    return 0


# ----------------------------------------------------------------------------------- the driver
def _run_block(spec: dict[str, Any], log, in_process: bool = False) -> dict[str, Any]:
    if in_process:  # --smoke: no subprocess start-up (peak RSS is then the driver's, not the block's)
        t0 = time.perf_counter()
        res = _sumrl_block(spec) if spec["system"] == "sumrl" else _trl_block(spec)
        res["wall_s"] = time.perf_counter() - t0
        return res
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    log.write(p.stdout + p.stderr)
    log.flush()
    lines = [line for line in p.stdout.splitlines() if line.startswith(RESULT)]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{spec['system']} block at {spec['prompt_tokens']} prompt tokens failed "
                         f"(exit {p.returncode}):\n{tail}")
    res = json.loads(lines[-1][len(RESULT):])
    res["wall_s"] = time.perf_counter() - t0
    return res


def summarize(blocks: list[dict[str, Any]], prompts: int, samples: int, prompt_tokens: int) -> dict[str, Any]:
    """Kept steps (each block's first step dropped) pooled over blocks: mean, min, max, tokens/s."""
    kept = [t for b in blocks for t in b["step_s"][1:]] or [t for b in blocks for t in b["step_s"]]
    lens = [x for b in blocks for x in b["mean_len"][1:]] or [x for b in blocks for x in b["mean_len"]] or [0.0]
    mean = statistics.fmean(kept)
    mlen = statistics.fmean(lens)
    out = {"s_per_step": mean, "min": min(kept), "max": max(kept), "n_steps": len(kept), "mean_len": mlen,
           "tokens_per_s": prompts * samples * (prompt_tokens + mlen) / mean,
           "peak_rss_gib": max(b["peak_rss_gib"] for b in blocks)}
    if any("peak_cuda_gib" in b for b in blocks):
        out["peak_cuda_gib"] = max(b.get("peak_cuda_gib", 0.0) for b in blocks)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="default")
    ap.add_argument("--data", default="scisummnet")
    ap.add_argument("--reward", default="rouge,length")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 4096], help="prompt tokens")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (default 4 below 2048 tokens, else 1)")
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=3, help="steps per block (the first is discarded)")
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds per length")
    ap.add_argument("--systems", nargs="+", default=["sumrl", "trl"], choices=["sumrl", "trl"])
    ap.add_argument("--bf16", default="auto", help="auto | true | false, resolved once and used by both")
    ap.add_argument("--trl-checkpointing", default="default", choices=["auto", "default", "on", "off"],
                    help="TRL activation checkpointing: default = TRL's own (on); auto = on from 2048 tokens, "
                         "off below (off OOMs a 24 GiB machine at 512 tokens)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--log", default=None, help="block output log (default: a temporary file)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (64 prompt tokens, 2 x 2, 8 new tokens, 2 steps, "
                                                         "1 round, blocks in this process): checks that everything runs, "
                                                         "measures nothing")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.smoke:
        args.lengths, args.prompts, args.samples, args.new_tokens = [64], 2, 2, 8
        args.steps, args.rounds = 2, 1
    if "trl" in args.systems:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("TRL is not installed: pip install -e '.[bench]' (or --systems sumrl)") from None

    from sumrl.config import parse_auto_bool
    from sumrl.models.precision import precision_line, resolve_bf16

    use_bf16, why = resolve_bf16(parse_auto_bool(args.bf16, "--bf16"))
    print(precision_line("bench_rl_vs_trl", use_bf16, why), flush=True)
    log = open(args.log, "w", encoding="utf-8") if args.log else tempfile.NamedTemporaryFile(
        "w", prefix="bench_rl_vs_trl_", suffix=".log", delete=False)
    print(f"block output -> {log.name}", flush=True)
    results: dict[str, Any] = {"precision": "bf16" if use_bf16 else "fp32", "precision_reason": why, "lengths": {}}
    for L in args.lengths:
        P = args.prompts or (4 if L < 2048 else 1)
        ckpt = args.trl_checkpointing if args.trl_checkpointing != "auto" else ("default" if L >= 2048 else "off")
        blocks: dict[str, list] = {s: [] for s in args.systems}
        for r in range(args.rounds):
            for system in args.systems:
                spec = dict(system=system, policy=args.policy, data=args.data, reward=args.reward, prompt_tokens=L,
                            prompts=P, samples=args.samples, new_tokens=args.new_tokens, temperature=args.temperature,
                            steps=args.steps, bf16=use_bf16, trl_checkpointing=ckpt, seed=args.seed,
                            threads=args.threads)
                res = _run_block(spec, log, in_process=args.smoke)
                blocks[system].append(res)
                print(f"  {L} tokens, round {r + 1}, {system}: steps {', '.join(f'{t:.1f}' for t in res['step_s'])} s "
                      f"(block wall {res['wall_s']:.0f} s)", flush=True)
        summ = {s: summarize(b, P, args.samples, L) for s, b in blocks.items()}
        if "trl" in blocks:
            summ["trl"]["gradient_checkpointing"] = blocks["trl"][0].get("trl_gradient_checkpointing")
        results["lengths"][str(L)] = {"prompts": P, "samples": args.samples, "systems": summ, "blocks": blocks}
    log.close()
    import torch

    print()
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"precision {results['precision']}, policy {args.policy}, data {args.data}, LoRA r16 all projections, "
          f"{args.new_tokens} new tokens, temperature {args.temperature}, no KL, 1 iteration, "
          f"{args.rounds} round(s) x {args.steps} steps per system (first step of each block discarded)")
    print("| prompt tokens | prompts x samples | system | s/step (min-max) | tokens/s | peak RSS (GiB) | "
          "mean completion | TRL / sumrl |")
    print("|---|---|---|---|---|---|---|---|")
    for L, r in results["lengths"].items():
        sy = r["systems"]
        ratio = sy["trl"]["s_per_step"] / sy["sumrl"]["s_per_step"] if {"trl", "sumrl"} <= sy.keys() else None
        for name, v in sy.items():
            mem = f"{v['peak_rss_gib']:.2f}" + (f" (CUDA {v['peak_cuda_gib']:.2f})" if "peak_cuda_gib" in v else "")
            extra = f" (checkpointing {'on' if v.get('gradient_checkpointing') else 'off'})" if name == "trl" else ""
            print(f"| {L} | {r['prompts']} x {r['samples']} | {name}{extra} | {v['s_per_step']:.2f} "
                  f"({v['min']:.2f}-{v['max']:.2f}) | {v['tokens_per_s']:.0f} | {mem} | {v['mean_len']:.1f} | "
                  f"{'' if ratio is None or name != 'sumrl' else f'{ratio:.2f}x'} |")
    if args.json:
        from sumrl.utils.io import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
