"""`sumrl demo` end to end on a tiny model: every stage runs, writes the report and its Markdown
tables, prints the summary table, and a second run redoes nothing (stage-level resume)."""

from __future__ import annotations

import json

from sumrl.cli import main

TINY = ["--n-test", "2", "--max-input-tokens", "160", "--max-new-tokens", "6", "--batch-size", "2",
        "--sft-steps", "2", "--sft-batch", "2", "--rm-steps", "2", "--ppo-steps", "1", "--ppo-batch", "2",
        "--grpo-steps", "1", "--grpo-batch", "1", "--grpo-samples", "2", "--no-bf16"]


def _data(path):
    from conftest import CORPUS

    rows = []
    for i in range(10):
        split = "train" if i < 6 else ("val" if i < 8 else "test")
        rows.append({"id": f"d{i}", "document": " ".join(CORPUS[i:i + 3]), "summary": CORPUS[i].split(".")[0] + ".",
                     "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_demo_runs_every_stage_then_resumes(tiny_model_dir, tmp_path, capsys):
    data = _data(tmp_path / "docs.jsonl")
    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *TINY]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    systems = ["base", "base-cleaned", "sft", "sft-cleaned", "ppo-lastmile", "grpo"]
    for folder in ["eval_base", "eval_base_cleaned", "sft", "eval_sft", "eval_sft_cleaned", "rm", "ppo_lastmile",
                   "eval_ppo_lastmile", "grpo", "eval_grpo", "report_stage"]:
        assert (out / folder / ".stage_done.json").exists(), folder
    evaluated = [json.loads((out / f / "metrics.json").read_text())["system"]
                 for f in ["eval_base", "eval_base_cleaned", "eval_sft", "eval_sft_cleaned", "eval_ppo_lastmile",
                           "eval_grpo"]]
    assert evaluated == systems
    # every system on the same held-out test documents
    ids = {f: [json.loads(line)["id"] for line in (out / f / "predictions.jsonl").read_text().splitlines()]
           for f in ["eval_base", "eval_sft", "eval_ppo_lastmile", "eval_grpo"]}
    assert all(v == ["d8", "d9"] for v in ids.values()), ids
    html = (out / "report.html").read_text()
    assert all(f'data-system="{s}"' in html for s in systems)
    md = (out / "results.md").read_text()
    assert "| ppo-lastmile | sft |" in md and "| grpo | sft-cleaned |" in md  # paired tests vs both baselines
    assert "report: " in printed and "total " in printed and "rouge1_f" in printed

    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("done already") == 11


def test_stage_dependencies_are_checked_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--stages", "ppo", "report", "--out", str(out)]) == 2
    assert "error: stage ppo (last-mile recipe) needs the rm stage" in capsys.readouterr().err
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir())  # no stage started


def test_finished_stages_with_other_settings_are_not_reused(tiny_model_dir, tmp_path, capsys):
    """Issue #19: `--preset quick` then `--preset default` into one --out used to print the quick
    run's results as the default preset's. Each stage's marker holds a fingerprint of its settings."""
    data = _data(tmp_path / "docs.jsonl")
    out = tmp_path / "demo"
    base = ["demo", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--stages", "base", *TINY]
    assert main(base) == 0, capsys.readouterr().err
    first = (out / "eval_base" / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert main(base) == 0 and capsys.readouterr().out.count("done already") == 2
    # other settings: refused before anything runs, one line naming the stages and the way out
    other = [a if a != "6" else "7" for a in base]  # --max-new-tokens 7
    assert main(other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eval base, eval base-cleaned" in err and "--overwrite" in err, err
    assert (out / "eval_base" / "predictions.jsonl").read_text() == first
    # --overwrite redoes exactly the stages that differ, and the new markers count as done afterwards
    assert main([*other, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "done already" not in printed and printed.count("redoing it (--overwrite)") == 2
    cfg = json.loads((out / "eval_base" / "config.json").read_text())
    assert cfg["max_new_tokens"] == 7
    assert main(other) == 0 and capsys.readouterr().out.count("done already") == 2
    # a marker without a fingerprint (written by an older sumrl) is not trusted either
    marker = out / "eval_base" / ".stage_done.json"
    marker.write_text(json.dumps({"seconds": 1.0}))
    assert main(other) == 2 and "eval base" in capsys.readouterr().err
