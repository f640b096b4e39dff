"""`sumrl demo` end to end on a tiny model: every stage runs, writes the report and its Markdown
tables, prints the summary table, and a second run redoes nothing (stage-level resume)."""

from __future__ import annotations

import json

from sumrl.cli import main

TINY = ["--n-test", "2", "--max-input-tokens", "160", "--max-new-tokens", "6", "--batch-size", "2",
        "--sft-steps", "2", "--sft-batch", "2", "--rm-steps", "2", "--ppo-steps", "1", "--ppo-batch", "2",
        "--grpo-steps", "1", "--grpo-batch", "1", "--grpo-samples", "2", "--no-bf16",
        # no tiny reference fits a 6-token cap whole: PPO takes the recipe's cap from the data here
        # (the default preset's eval cap is checked in test_default_preset_runs_the_fast_paths)
        "--ppo-cap", "data"]


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
    # the RL movement lines and the verdict, also saved; three examples chosen by the stated rule
    assert "Did RL move the policy?" in printed and printed.count("test summaries differ from SFT's") == 2
    verdict = (out / "verdict.txt").read_text().strip()
    assert f"verdict: {verdict}" in printed and ("beats SFT on both" in verdict or "No RL variant beats SFT" in verdict)
    assert "Chosen by a rule fixed in advance" in html and html.count('<article class="example"') == 2  # 2 test docs
    cfg = json.loads((out / "eval_grpo" / "config.json").read_text())
    assert cfg["no_repeat_ngram"] == 6  # the same guard for every system
    assert all(json.loads((out / f / "config.json").read_text())["no_repeat_ngram"] == 6
               for f in ["eval_base", "eval_sft", "eval_ppo_lastmile"])

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


def _tests(rl, la, sim, n=16):
    """Paired-test rows as analysis.paired_tests returns them: (delta, p) per verdict metric."""
    from sumrl.report.analysis import _better

    rows = []
    for metric, (delta, p) in (("la_rougeL", la), ("sim_ref", sim)):
        res = {"delta": delta, "p_value": p}
        rows.append({"metric": metric, **res, "better": _better(metric, res)})
    return {"rl": rl, "baseline": "sft", "n": n, "tests": rows}


def test_verdict_wording_rule():
    """The verdict never implies an effect the paired tests do not show: "beats" only when RL is
    significantly better on both length-adjusted ROUGE-L and similarity."""
    from sumrl.demo import verdict

    moved = {"a": (5, 16), "b": (3, 16)}
    both = verdict([_tests("a", (0.03, 0.01), (0.02, 0.04)), _tests("b", (0.01, 0.5), (0.0, 0.9))], moved)
    assert "a beats SFT on both length-adjusted ROUGE-L and similarity (length-adjusted ROUGE-L +0.030, p=0.01; " \
           "similarity to the reference +0.020, p=0.04)." in both
    assert "b does not differ significantly from SFT" in both and "No RL variant beats SFT" not in both
    one = verdict([_tests("a", (0.03, 0.01), (0.02, 0.20))], moved)
    assert "a is better than SFT on length-adjusted ROUGE-L only" in one and "beats SFT on both" not in one
    assert "No RL variant beats SFT at p < 0.05 on these 16 papers" in one
    worse = verdict([_tests("a", (-0.03, 0.01), (0.02, 0.01))], moved)
    assert "a is significantly worse than SFT on length-adjusted ROUGE-L" in worse and "No RL variant" in worse
    none = verdict([_tests("a", (0.0, 1.0), (0.0, 1.0))], {"a": (0, 16)})
    assert none.startswith("a wrote the same summaries as SFT on all 16 test papers") and "No RL variant" in none
    # only tests against the named baseline count (sft-cleaned rows are ignored)
    cleaned = {**_tests("a", (0.03, 0.01), (0.02, 0.01)), "baseline": "sft-cleaned"}
    assert "beats" not in verdict([cleaned], moved).replace("No RL variant beats", "")


def test_rl_movement_reads_sampled_steps_only(tmp_path):
    from sumrl.demo import changed_summaries, rl_movement

    rows = [{"step": 1, "objective/kl": 0.0, "completions/mean_length": 100.0, "completions/reference_fraction": 0.0},
            {"step": 2, "objective/kl": 0.5, "completions/mean_length": 30.0, "completions/reference_fraction": 1.0},
            {"step": 3, "objective/kl": 0.02, "completions/mean_length": 80.0, "completions/reference_fraction": 0.0},
            {"step": 3, "val/reward": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rl_movement(tmp_path) == {"steps": 2, "kl_first": 0.0, "kl_last": 0.02, "kl_max": 0.02,
                                     "len_first": 100.0, "len_last": 80.0}  # the reference step is not the policy's
    assert rl_movement(tmp_path / "nope") is None
    for name, preds in (("a", ["x", "y", "z"]), ("b", ["x", "Y", "z"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "prediction": p}) + "\n" for i, p in enumerate(preds)))
    assert changed_summaries(tmp_path / "a", tmp_path / "b") == (1, 3)


def test_negative_settings_are_refused_in_one_line(tmp_path, capsys):
    for flag in ("--no-repeat-ngram", "--rl-lr", "--sft-patience"):
        assert main(["demo", flag, "-1", "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {flag} must be >= 0, got -1" or err.startswith(f"error: {flag} must be >= 0"), err
    assert main(["eval", "--predictions", str(tmp_path / "p.jsonl"), "--no-repeat-ngram", "-2"]) == 2
    assert "--no-repeat-ngram must be >= 0" in capsys.readouterr().err


def test_default_preset_runs_the_fast_paths(tmp_path, monkeypatch):
    """What makes the default preset fit its 15-minute target (docs/results.md), as the stages
    configure their commands: SFT without activation checkpointing, PPO passes of 2 rows under the
    trainer's checkpointing threshold at the evaluation's summary cap, every test paper in one
    generation batch, the RM's held-out accuracy on the n_test papers and its summary window at
    that cap."""
    from sumrl import demo
    from sumrl.rl.config import RLConfig
    from sumrl.rl import trainer
    from sumrl.training import rm, sft

    seen = {}
    monkeypatch.setattr(sft, "train", lambda c: seen.setdefault("sft", c) and {})
    monkeypatch.setattr(rm, "train_synthetic_rm", lambda c: seen.setdefault("rm", c) and {})
    monkeypatch.setattr(trainer, "train", lambda c: seen.setdefault(c.algo, c) and {})
    monkeypatch.setattr("sumrl.rewards.reward_model.read_reward_model_config",
                        lambda p: {"token_normalization": {"mean": 0.5, "std": 0.25}})
    cfg = demo.DemoConfig(bf16="false").resolved()
    assert cfg.batch_size == cfg.n_test == 16
    demo._sft(cfg, tmp_path / "sft", resume_ok=False)
    demo._rm(cfg, tmp_path / "rm")
    demo._ppo(cfg, tmp_path / "ppo", "default", tmp_path / "rm", resume_ok=False)
    s, r, p = seen["sft"], seen["rm"], seen["ppo"]
    assert s.gradient_checkpointing is False and s.max_seq_len == 672 and s.eval_every == 10
    assert r.eval_limit == 16 and r.norm_limit == 16
    # the RM reads as many summary tokens as PPO writes, with the recipe's document budget (384 - 256)
    assert r.max_summary_tokens == 160 and r.max_length == 160 + 128
    assert p.micro_batch_size == 2 and p.summary_cap_quantile is None and p.max_new_tokens == 160
    assert p.gradient_checkpointing == "auto" and 2 * (512 + 160) <= p.checkpoint_tokens
    assert p.value_model == "head" and p.kl_coef == 0 and p.reference_kl  # the rest is the recipe's
    # the full preset keeps the recipe's cap from the data and one pass per step
    full = demo.DemoConfig(preset="full", bf16="false").resolved()
    seen.clear()
    demo._ppo(full, tmp_path / "ppo-full", "default", tmp_path / "rm", resume_ok=False)
    assert seen["ppo"].summary_cap_quantile == 0.95 and seen["ppo"].micro_batch_size == 16
    demo._rm(full, tmp_path / "rm-full")
    assert seen["rm"].max_summary_tokens == 256 and seen["rm"].max_length == 384
    assert isinstance(seen["ppo"], RLConfig)
