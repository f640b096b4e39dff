"""scripts/gpu_check.sh (the prepared GPU check) runs end to end on the CPU with --dry-run: every
stage of every case gives a row with positive seconds and tokens/s, and the FLOP count it divides
by the GPU peak is the hand-derived one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "rows.jsonl")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "rows.jsonl").read_text().splitlines()]
    stages = {(r["prompt_tokens"], r["stage"]) for r in rows}
    expected = {"sft_step", "grpo_generate", "grpo_forward", "grpo_train", "ppo_generate", "ppo_forward", "ppo_train"}
    assert stages == {(64, s) for s in expected}
    assert all(r["seconds"] > 0 and r["tokens_per_s"] > 0 and "error" not in r for r in rows)
    assert "gpu_check: 7 rows" in p.stdout


def test_flop_count_is_the_stated_formula():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from transformers import AutoModelForCausalLM

    import gpu_check as g

    cfg = g.config_of("qwen2.5-0.5b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = g.weight_params(model)
    assert n == 494_032_768  # Qwen2.5-0.5B's published size (tied head counted once)
    # 2 N per token + attention 2 * layers * hidden * context per token
    assert g.forward_flops(cfg, n, 10, 100) == 2 * n * 10 + 2 * 24 * 896 * 100 * 10
    assert g.peak_flops(torch, torch.device("cpu")) == ("cpu", None)
