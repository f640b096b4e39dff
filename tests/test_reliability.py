"""Issue #19: silent ruin (divergence, torn logs, leftover temporaries) and small-file runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sumrl.cli import main  # noqa: E402
from sumrl.errors import DataError, TrainingDiverged  # noqa: E402


def _data(path: Path, n: int = 12, with_split: bool = True) -> Path:
    from conftest import CORPUS

    rows = []
    for i in range(n):
        r = {"id": f"d{i}", "document": " ".join(CORPUS[i % 5:i % 5 + 3]), "summary": CORPUS[i % 5].split(".")[0]}
        if with_split:
            r["split"] = "train" if i < n - 4 else ("val" if i < n - 2 else "test")
        rows.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft(model, data, out, *extra) -> list[str]:
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "6", "--batch-size",
            "2", "--max-seq-len", "128", "--max-target-tokens", "16", "--eval-every", "0", "--no-progress",
            "--no-tensorboard", "--warmup-steps", "0", *extra]


def _one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


# ------------------------------------------------------------------------ divergence (SFT)
def test_sft_lr_1e3_stops_before_the_ruinous_step(tiny_model_dir, tmp_path, capsys):
    """`--lr 1e3` used to drive the loss to ln(vocab) with zero gradient and exit 0 "sft done"."""
    out = tmp_path / "sft"
    rc = main(_sft(tiny_model_dir, _data(tmp_path / "d.jsonl"), out, "--lr", "1e3", "--save-every", "1"))
    captured = capsys.readouterr()
    assert rc == 2 and "sft done" not in captured.out
    line = _one_error(captured.err)
    assert "sft" in line and ("collapsed" in line or "diverged" in line or "blew up" in line), line
    assert "lower --lr" in line and str(out / "checkpoints") in line
    assert not (out / "sumrl_model.json").exists()  # nothing published
    assert (out / "checkpoints" / "last").exists()  # the checkpoints before the stop are kept


def test_sft_huge_finite_lr_never_writes_non_finite_weights(tiny_model_dir, tmp_path, capsys):
    """A finite but absurd --lr: Adam's normalised step puts inf/NaN into the weights; neither a
    checkpoint nor the published adapter may hold them (`--lr inf` used to save a half-NaN adapter)."""
    out = tmp_path / "sft"
    rc = main(_sft(tiny_model_dir, _data(tmp_path / "d.jsonl"), out, "--lr", "1e30", "--save-every", "1"))
    assert rc == 2
    _one_error(capsys.readouterr().err)
    assert not (out / "sumrl_model.json").exists()
    for ckpt in (out / "checkpoints").glob("step-*"):
        for name, t in torch.load(ckpt / "trainable.pt", weights_only=True).items():
            assert bool(torch.isfinite(t).all()), (ckpt.name, name)


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf", "0", "-1e-4"])
def test_sft_non_finite_or_non_positive_lr_refused_when_read(lr, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(_sft(tiny_model_dir, tmp_path / "never-read.jsonl", out, f"--lr={lr}")) == 2
    assert "lr" in _one_error(capsys.readouterr().err)
    assert not out.exists()  # refused before anything was written


def test_divergence_guard_branches():
    from sumrl.training.optim import DivergenceGuard, check_step

    g = DivergenceGuard(what="sft", max_loss_ratio=3.0, where="runs/x/checkpoints")
    g.check(2.0, 1.0, 1)
    assert g.reference == 2.0
    g.check(5.9, 0.5, 2)  # under 3 x 2.0
    with pytest.raises(TrainingDiverged, match=r"blew up at step 3: the loss 6.1 is over 3 x the first step's 2"):
        g.check(6.1, 0.5, 3)
    with pytest.raises(TrainingDiverged, match="gradient is exactly zero"):
        g.check(1.0, 0.0, 4)
    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        g.check(math.nan, 1.0, 5)
    with pytest.raises(TrainingDiverged, match="gradient norm is inf.*runs/x/checkpoints"):
        g.check(1.0, math.inf, 6)
    DivergenceGuard(what="sft", max_loss_ratio=0.0, reference=1.0).check(100.0, 1.0, 7)  # ratio check off
    with pytest.raises(TrainingDiverged, match="reward-model training diverged at step 3: the gradient norm is nan"):
        check_step(0.5, math.nan, 3, what="reward-model training")


def test_guard_reference_survives_resume(tiny_model_dir, tmp_path):
    """The blow-up bound is relative to the run's first loss, saved with the checkpoint, so a
    resumed run keeps the same bound (not its own first step's)."""
    from sumrl.training.checkpoint import last_checkpoint

    out = tmp_path / "sft"
    assert main(_sft(tiny_model_dir, _data(tmp_path / "d.jsonl"), out, "--lr", "1e-3", "--save-every", "3")) == 0
    state = json.loads((last_checkpoint(out / "checkpoints") / "state.json").read_text())
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]
    assert state["counters"]["first_loss"] == pytest.approx(first, rel=1e-12)


# ------------------------------------------------------------------------ torn logs, temporaries
def test_logger_resume_drops_a_torn_last_line(tmp_path, capsys):
    from sumrl.data.formats import read_metrics_log as read_metrics
    from sumrl.utils.logging import MetricLogger

    log = MetricLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3):
        log.log({"train/loss": 1.0 / s}, s)
    log.log_samples([{"prediction": "a"}, {"prediction": "b"}], 2)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # what a kill mid-append leaves
    with open(tmp_path / "samples.jsonl", "a") as f:
        f.write('{"step": 3, "predic')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    MetricLogger(tmp_path, tensorboard=False, resume_step=2).close()
    assert "line 4 is incomplete (an interrupted write); dropped it" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert [json.loads(x)["prediction"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()] == ["a", "b"]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header + 2 rows


def test_a_torn_line_in_the_middle_is_still_an_error(tmp_path):
    from sumrl.utils.io import iter_jsonl_file

    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "x\n{"step": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        list(iter_jsonl_file(p, tolerate_torn_tail=True))
    p.write_text('{"step": 1}\n{"step": 2, "x')
    with pytest.raises(DataError, match="line 2"):  # not tolerated unless asked
        list(iter_jsonl_file(p))


def test_resume_removes_leftover_temporary_checkpoint_folders(tmp_path, capsys):
    from sumrl.training.checkpoint import resume_point, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, model=model, optimizer=opt)
    stale = root / ".step-00000002.abc123.tmp"  # a kill mid-write leaves this (19.7 MB for a LoRA run)
    stale.mkdir()
    (stale / "trainable.pt").write_bytes(b"x" * 1000)
    (tmp_path / ".metrics.jsonl.x1y2.tmp").write_text("partial")
    keep = root / "step-00000001"
    assert resume_point(tmp_path, resume=True, overwrite=False) == keep
    assert not stale.exists() and not (tmp_path / ".metrics.jsonl.x1y2.tmp").exists() and keep.exists()
    assert "removed 2 unfinished temporary" in capsys.readouterr().err


def test_atomic_write_failure_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    from sumrl.utils import io

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError) as e:
        io.write_json(tmp_path / "metrics.json", {"a": 1})
    assert e.value.filename == str(tmp_path / "metrics.json") and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ BOM, pairs
def test_pairs_with_a_bom_are_accepted(tmp_path):
    from sumrl.data.pairs import read_pairs

    row = {"id": "a", "document": "d", "chosen": "c", "rejected": "r", "margin": None, "source": "x"}
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode())
    assert [r["chosen"] for r in read_pairs(p)] == ["c"]


# ------------------------------------------------------------------------ small user files
def _no_val_rows(n: int) -> list[str]:
    """Ids whose hash split (seed 0) is never 'val': a small file without a validation split."""
    from sumrl.data.splits import hash_split

    ids, i = [], 0
    while len(ids) < n:
        if hash_split(f"r{i}", 0) == "train":
            ids.append(f"r{i}")
        i += 1
    return ids


def _small_file(tmp_path: Path) -> Path:
    from conftest import CORPUS

    p = tmp_path / "small.jsonl"
    rows = [{"id": rid, "document": " ".join(CORPUS[k % 5:k % 5 + 2]), "summary": CORPUS[k % 5].split(".")[0]}
            for k, rid in enumerate(_no_val_rows(4))]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_sft_on_a_file_too_small_for_a_val_split_runs_with_a_notice(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    args = ["sft", "--model", str(tiny_model_dir), "--data", str(_small_file(tmp_path)), "--out", str(out),
            "--steps", "1", "--batch-size", "2", "--max-seq-len", "128", "--max-target-tokens", "16",
            "--eval-every", "1", "--val-generate", "0", "--no-progress", "--no-tensorboard"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "no examples in split 'val'" in err and "validation is skipped" in err
    assert (out / "sumrl_model.json").exists()


def test_rl_on_a_file_too_small_for_a_val_split_runs_with_a_notice(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rl"
    args = ["rl", "--policy", str(tiny_model_dir), "--data", str(_small_file(tmp_path)), "--out", str(out),
            "--reward", "length,eos", "--steps", "1", "--batch-size", "2", "--max-new-tokens", "4",
            "--max-prompt-tokens", "96", "--eval-every", "1", "--no-progress", "--no-tensorboard"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "note:" in err and "no examples in split 'val'" in err


def test_metric_namespaces_are_declared_once_and_read_by_the_report(tmp_path):
    """Every logged key is in a declared namespace (an undeclared one is refused), and the report
    tells RL from SFT logs by the declaration: the RL critic's `value/*` is RL's, `val/*` is SFT's."""
    from sumrl.report.runs import load_train_run
    from sumrl.utils.logging import NAMESPACES, MetricLogger, trainer_of

    assert NAMESPACES["value"][0] == ("rl",) and NAMESPACES["val"][0] == ("sft",)
    log = MetricLogger(tmp_path / "rl", tensorboard=False)
    with pytest.raises(ValueError, match="loss"):
        log.log({"loss": 1.0}, 1)
    log.log({"value/loss": 0.5, "train/lr": 1e-5}, 1)
    assert load_train_run(tmp_path / "rl").kind == "rl"
    sft = MetricLogger(tmp_path / "sft", tensorboard=False)
    sft.log({"train/loss": 2.0}, 1)
    assert load_train_run(tmp_path / "sft").kind == "sft"
    assert trainer_of(["val/loss"]) == "sft" and trainer_of(["step"]) == "unknown"
