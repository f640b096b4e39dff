"""The RL benchmark scripts run end to end in --smoke mode (tiny model, tiny sizes): they drive the
public sumrl.rl.trainer.train, so they keep working as the RL stages change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SUMRL_PRECISION_BENCH": "0"}
    # a subprocess: TRL's Trainer would otherwise leave Accelerate's global state set for later tests
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_bench_rl_step_smoke(tiny_model_dir, tmp_path):
    out = tmp_path / "rows.json"
    p = _run("bench_rl_step.py", "--smoke", "--policy", str(tiny_model_dir), "--algos", "grpo", "--json", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["prompt_tokens"] for r in rows] == [64, 128]
    for r in rows:
        assert r["time/step"] > 0 and r["time/generate"] > 0 and r["time/train"] > 0 and r["peak_rss_gib"] > 0
    assert "| grpo | 64 |" in p.stdout and "per 1k prompt tokens" in p.stdout
    if sys.platform.startswith("linux"):  # peak RSS per stage (VmHWM)
        assert all(set(r["stage_rss_gib"]) >= {"generate", "score", "forward", "train"} for r in rows)
        assert all(max(r["stage_rss_gib"].values()) <= r["peak_rss_gib"] for r in rows)
    # rows of separate runs merged into one table (lengths run as separate commands)
    one, two = tmp_path / "a.json", tmp_path / "b.json"
    one.write_text(json.dumps(rows[1:]))
    two.write_text(json.dumps(rows[:1]))
    m = _run("bench_rl_step.py", "--merge", str(one), str(two))
    assert m.returncode == 0, m.stderr[-2000:]
    assert m.stdout.index("| grpo | 64 |") < m.stdout.index("| grpo | 128 |") and "per 1k prompt tokens" in m.stdout


def test_bench_rl_vs_trl_smoke(tiny_model_dir, tmp_path):
    pytest.importorskip("trl", reason="TRL is the optional 'bench' extra")
    out = tmp_path / "res.json"
    p = _run("bench_rl_vs_trl.py", "--smoke", "--policy", str(tiny_model_dir), "--json", str(out),
             "--log", str(tmp_path / "blocks.log"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads(out.read_text())
    r = res["lengths"]["64"]
    assert r["prompts"] == 2 and r["samples"] == 2
    for system in ("sumrl", "trl"):
        (block,) = r["blocks"][system]
        assert len(block["step_s"]) == 2 and all(t > 0 for t in block["step_s"])
        assert r["systems"][system]["s_per_step"] == pytest.approx(block["step_s"][1])  # first step discarded
        assert 0 < r["systems"][system]["mean_len"] <= 8
    assert "precision" in p.stdout.splitlines()[0] and "TRL / sumrl" in p.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_rl_memory_smoke(tiny_model_dir, tmp_path):
    out = tmp_path / "mem.json"
    # one worker process (each loads torch and the model): the train part with checkpointing
    p = _run("bench_rl_memory.py", "--smoke", "--policy", str(tiny_model_dir), "--parts", "train",
             "--checkpointing", "on", "--json", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["part"], r["checkpointing"], r["length"]) for r in rows] == [("train", "on", 32)]
    assert all(r["peak_gib"] >= r["base_gib"] > 0 and r["seconds"] > 0 and r["heap_capped"] for r in rows)
    assert "| train | on | 32 |" in p.stdout
