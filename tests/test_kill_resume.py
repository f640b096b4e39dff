"""Kill-and-resume matrix (issue #19): `kill -9` of `sft`, `rl` and `demo` at chosen moments,
then the same command again (``--resume`` for sft/rl, a plain rerun for the demo), must end
byte-identical to an uninterrupted run.

The kills are real SIGKILLs of a `python -m sumrl.cli` subprocess (no cleanup, no ``finally``),
placed deterministically with ``SUMRL_KILL_AT=POINT:N`` (:mod:`sumrl.utils.faults`): mid-
checkpoint write, between a checkpoint and its ``last`` pointer, mid-way through a metrics line,
mid-way through publishing the model, after a block of evaluation predictions. Tests run against
the command line only, so they hold whatever the trainers' internals become.

Each kill test checks: the process died by SIGKILL; the rerun exits 0; the published adapter
(``adapter_model.safetensors``) is byte-identical to the uninterrupted run's; the logged losses
and rewards are the same, step by step, with no step missing or logged twice; no temporary
folder of the killed write is left. Marked slow (about 3 minutes on 2 CPU cores): `make test`
and CI run it; `make test-fast` skips it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _run(args: list[str], *, kill_at: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("SUMRL_KILL_AT", None)
    if kill_at:
        env["SUMRL_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "sumrl.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Fields that measure time, not the trajectory.
TIMING = ("tokens_per_s", "time/", "seconds", "_per_s")


def _trajectory(out: Path) -> list[dict]:
    rows = []
    for r in _rows(out / "metrics.jsonl"):
        rows.append({k: v for k, v in r.items() if not any(t in k for t in TIMING)})
    return rows


def _assert_same_run(got: Path, ref: Path) -> None:
    assert (got / "adapter_model.safetensors").read_bytes() == (ref / "adapter_model.safetensors").read_bytes()
    assert _trajectory(got) == _trajectory(ref)
    steps = [r["step"] for r in _rows(got / "metrics.jsonl")]
    assert steps == [r["step"] for r in _rows(ref / "metrics.jsonl")]
    leftovers = [p for p in got.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory) -> Path:
    from conftest import CORPUS

    p = tmp_path_factory.mktemp("kill-data") / "docs.jsonl"
    rows = [{"id": f"d{i}", "document": " ".join(CORPUS[i % 5:i % 5 + 3]), "summary": CORPUS[i % 5].split(".")[0] + ".",
             "split": "train" if i < 8 else ("val" if i < 10 else "test")} for i in range(13)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


# ------------------------------------------------------------------------------------- sft
def _sft_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "6", "--batch-size", "2",
            "--max-seq-len", "128", "--max-target-tokens", "16", "--lr", "1e-3", "--warmup-steps", "1",
            "--save-every", "2", "--eval-every", "3", "--val-examples", "2", "--val-generate", "1",
            "--val-max-new-tokens", "4", "--no-progress", "--no-tensorboard"]


SFT_KILLS = ["checkpoint-mid-write:2", "checkpoint-before-last:2", "log-mid-line:6", "publish-mid:1"]


@pytest.fixture(scope="module")
def sft_reference(tiny_model_dir, kill_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-ref") / "run"
    r = _run(_sft_args(tiny_model_dir, kill_data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("kill_at", SFT_KILLS)
def test_sft_killed_then_resumed_is_identical(kill_at, sft_reference, tiny_model_dir, kill_data, tmp_path):
    out = tmp_path / "run"
    killed = _run(_sft_args(tiny_model_dir, kill_data, out), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    resumed = _run([*_sft_args(tiny_model_dir, kill_data, out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill_at.startswith("checkpoint-mid-write"):  # the killed write's folder is removed, and that is said
        assert "removed 1 unfinished temporary" in resumed.stderr
    if kill_at.startswith("log-mid-line"):
        assert "incomplete (an interrupted write); dropped it" in resumed.stderr
    _assert_same_run(out, sft_reference)
    samples = _rows(out / "samples.jsonl")
    assert [r["step"] for r in samples] == [r["step"] for r in _rows(sft_reference / "samples.jsonl")]


# -------------------------------------------------------------------------------------- rl
def _rl_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["rl", "--policy", str(model), "--data", str(data), "--out", str(out), "--reward", "length,eos",
            "--steps", "4", "--batch-size", "2", "--max-new-tokens", "6", "--max-prompt-tokens", "96",
            "--save-every", "2", "--sample-every", "1", "--eval-every", "0", "--no-progress", "--no-tensorboard"]


RL_KILLS = ["checkpoint-mid-write:2", "checkpoint-before-last:1", "log-mid-line:5"]


@pytest.fixture(scope="module")
def rl_reference(tiny_model_dir, kill_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl-ref") / "run"
    r = _run(_rl_args(tiny_model_dir, kill_data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("kill_at", RL_KILLS)
def test_rl_killed_then_resumed_is_identical(kill_at, rl_reference, tiny_model_dir, kill_data, tmp_path):
    out = tmp_path / "run"
    killed = _run(_rl_args(tiny_model_dir, kill_data, out), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    # the kill points are placed once the first checkpoint folder is complete (its `last` pointer
    # may not be written yet: resume then finds the newest complete folder)
    assert any((d / "state.json").exists() for d in (out / "checkpoints").glob("step-*"))
    resumed = _run([*_rl_args(tiny_model_dir, kill_data, out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(out, rl_reference)


# ------------------------------------------------------------------------------------ demo
def _demo_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["demo", "--model", str(model), "--data", str(data), "--out", str(out), "--stages", "base", "sft",
            "--n-test", "3", "--max-input-tokens", "96", "--max-new-tokens", "4", "--batch-size", "1",
            "--sft-steps", "6", "--sft-batch", "2", "--no-bf16"]


DEMO_KILLS = ["eval-after-block:1", "checkpoint-mid-write:2", "publish-mid:1"]


def _demo_outputs(out: Path) -> dict:
    got = {}
    for f in ("eval_base", "eval_base_cleaned", "eval_sft", "eval_sft_cleaned"):
        got[f + "/predictions.jsonl"] = (out / f / "predictions.jsonl").read_bytes()
        got[f + "/metrics"] = json.loads((out / f / "metrics.json").read_text())["metrics"]
    got["sft/adapter"] = (out / "sft" / "adapter_model.safetensors").read_bytes()
    got["sft/trajectory"] = _trajectory(out / "sft")
    return got


@pytest.fixture(scope="module")
def demo_reference(tiny_model_dir, kill_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo-ref") / "demo"
    r = _run(_demo_args(tiny_model_dir, kill_data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return _demo_outputs(out)


@pytest.mark.parametrize("kill_at", DEMO_KILLS)
def test_demo_killed_then_rerun_is_identical(kill_at, demo_reference, tiny_model_dir, kill_data, tmp_path):
    out = tmp_path / "demo"
    killed = _run(_demo_args(tiny_model_dir, kill_data, out), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    if kill_at.startswith("eval-after-block"):  # killed inside the first stage, one block saved
        partial = out / "eval_base" / "predictions.partial.jsonl"
        assert len(partial.read_text().splitlines()) == 2  # the rerun generates only the third
    again = _run(_demo_args(tiny_model_dir, kill_data, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _demo_outputs(out) == demo_reference
    if not kill_at.startswith("eval-after-block"):  # killed in the sft stage: the eval stages before it
        assert again.stdout.count("done already") == 2  # are not redone
