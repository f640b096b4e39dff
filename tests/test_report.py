"""`sumrl report` without a browser: roles, paired tests, extra length, highlighting, escaping,
bad input and the CLI."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sumrl.cli import main
from sumrl.errors import SumrlError
from sumrl.evaluation.bootstrap import paired_bootstrap
from sumrl.report import analysis, build_report
from sumrl.report.runs import load_eval_run, load_eval_runs, load_train_run
from test_report_support import make_runs, make_train_runs, write_run


# --------------------------------------------------------------------------- helpers


def hand_run(folder: Path, system: str, rows: list[tuple[str, dict, str, str]]) -> Path:
    """A run folder whose per-example metrics are given by hand: rows of (id, metrics, prediction, reference)."""
    return write_run(folder, system, [{"id": i, "document": "source text", "references": [ref], "prediction": pred,
                                       "metrics": m} for i, m, pred, ref in rows], n_bootstrap=10)


class _Collector(HTMLParser):
    """Tags/attributes of an HTML file (to check what the browser would fetch)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html_text: str) -> list[tuple[str, dict]]:
    c = _Collector()
    c.feed(html_text)
    return c.tags


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = make_runs(root)
    train = make_train_runs(root)
    out = build_report(runs, root / "out" / "report.html", train_runs=train, n_examples=4, n_bootstrap=200)
    return root, runs, train, out, out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- roles


def test_default_roles_follow_the_name_rule():
    r = analysis.assign_roles(["base", "base-cleaned", "sft", "SFT-cleaned", "ppo", "grpo-len"])
    assert r.baselines == ["sft", "SFT-cleaned"]
    assert r.rl == ["ppo", "grpo-len"]
    assert r.role("base-cleaned") == "base" and r.role("ppo") == "RL" and r.role("sft") == "baseline"


def test_explicit_roles_and_typos():
    r = analysis.assign_roles(["zero-shot", "supervised", "ppo", "grpo"], baselines=["supervised"], rl=["grpo"])
    assert r.baselines == ["supervised"] and r.rl == ["grpo"] and r.role("ppo") == "other"
    # Only the baselines given: RL = all others not named base*.
    r = analysis.assign_roles(["zero-shot", "supervised", "ppo"], baselines=["supervised"])
    assert r.rl == ["zero-shot", "ppo"]
    with pytest.raises(SumrlError, match="--baseline sfft: no such system"):
        analysis.assign_roles(["sft", "ppo"], baselines=["sfft"])
    with pytest.raises(SumrlError, match="both a baseline and an RL variant"):
        analysis.assign_roles(["sft", "ppo"], rl=["sft"])


# --------------------------------------------------------------------------- paired tests


def test_paired_test_pairs_by_id_not_by_position(tmp_path):
    # rl has an extra id "e" (no partner: must not count) and sft's file is in reverse order.
    # rouge2_f is identical per id, so pairing by id gives zero differences (CI [0, 0], p = 1);
    # pairing by line position would give differences -3, -1, 1, 3.
    rl_rows = [("a", {"rouge1_f": 0.5, "rouge2_f": 1.0}, "x", "y"), ("b", {"rouge1_f": 0.6, "rouge2_f": 2.0}, "x", "y"),
               ("c", {"rouge1_f": 0.7, "rouge2_f": 3.0}, "x", "y"), ("d", {"rouge1_f": 0.8, "rouge2_f": 4.0}, "x", "y"),
               ("e", {"rouge1_f": 100.0, "rouge2_f": 100.0}, "x", "y")]
    sft_rows = [("d", {"rouge1_f": 0.4, "rouge2_f": 4.0}, "x", "y"), ("c", {"rouge1_f": 0.4, "rouge2_f": 3.0}, "x", "y"),
                ("b", {"rouge1_f": 0.4, "rouge2_f": 2.0}, "x", "y"), ("a", {"rouge1_f": 0.4, "rouge2_f": 1.0}, "x", "y")]
    runs = load_eval_runs([hand_run(tmp_path / "rl", "rl", rl_rows), hand_run(tmp_path / "sft", "sft", sft_rows)])
    roles = analysis.assign_roles(["rl", "sft"])
    (res,) = analysis.paired_tests(runs, roles, n_resamples=1000, seed=0)
    assert (res["rl"], res["baseline"], res["n"], res["n_unpaired"]) == ("rl", "sft", 4, 1)
    t = {x["metric"]: x for x in res["tests"]}
    assert set(t) == {"rouge1_f", "rouge2_f"}  # only metrics both runs have
    r1 = t["rouge1_f"]
    assert r1["delta"] == pytest.approx(0.25)
    assert (r1["mean_rl"], r1["mean_baseline"]) == (pytest.approx(0.65), pytest.approx(0.4))
    # every difference is positive: no resampled mean <= 0, so p = 2 * 1 / (B + 1)
    assert r1["p_value"] == pytest.approx(2 / 1001)
    assert 0.1 <= r1["ci_low"] <= 0.25 <= r1["ci_high"] <= 0.4
    assert r1["better"] == "better"
    # same numbers as the bootstrap on correctly aligned arrays
    assert r1["ci_low"] == paired_bootstrap([0.5, 0.6, 0.7, 0.8], [0.4] * 4, n_resamples=1000, seed=0)["ci_low"]
    r2 = t["rouge2_f"]
    assert (r2["delta"], r2["ci_low"], r2["ci_high"], r2["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert r2["better"] is None


def test_paired_test_drops_missing_values_and_knows_directions(tmp_path):
    rl_rows = [(i, {"hallucination_rate": v, "pred_words": 10.0}, "x", "y") for i, v in
               zip("abcdef", [0.0, 0.0, 0.1, 0.0, 0.0, 0.0])]
    rl_rows[5][1].pop("hallucination_rate")  # undefined for f: that pair is dropped
    sft_rows = [(i, {"hallucination_rate": 0.5, "pred_words": 20.0}, "x", "y") for i in "abcdef"]
    runs = load_eval_runs([hand_run(tmp_path / "rl", "ppo", rl_rows), hand_run(tmp_path / "sft", "sft", sft_rows)])
    (res,) = analysis.paired_tests(runs, analysis.assign_roles(["ppo", "sft"]), n_resamples=500)
    t = {x["metric"]: x for x in res["tests"]}
    h = t["hallucination_rate"]
    assert h["n"] == 5 and h["delta"] == pytest.approx((0.1 - 2.5) / 5)
    assert h["better"] == "better"  # lower hallucination is better
    assert t["pred_words"]["delta"] == -10.0 and t["pred_words"]["better"] is None  # no direction for length


def test_paired_tests_cover_every_rl_baseline_pair(fake):
    root, runs, *_ = fake
    more = make_runs(root / "more", systems=("sft", "rl-ppo"))
    # rename: a second baseline "sft-cleaned" and a second RL variant "rl-grpo"
    extra = []
    for src, name in zip(more, ("sft-cleaned", "rl-grpo")):
        rows = [json.loads(l) for l in (src / "predictions.jsonl").read_text().splitlines()]
        extra.append(write_run(root / "more2" / name, name, rows, n_bootstrap=10))
    loaded = load_eval_runs(list(runs) + extra)
    res = analysis.paired_tests(loaded, analysis.assign_roles([r.system for r in loaded]), n_resamples=50)
    assert [(r["rl"], r["baseline"]) for r in res] == [
        ("rl-ppo", "sft"), ("rl-ppo", "sft-cleaned"), ("rl-grpo", "sft"), ("rl-grpo", "sft-cleaned")]
    main_metrics = {"rouge1_f", "rouge2_f", "rougeL_f", "la_rougeL", "extra_words_pos", "hallucination_rate"}
    assert all(main_metrics <= {t["metric"] for t in r["tests"]} for r in res)


# --------------------------------------------------------------------------- extra length


def test_extra_length_table_values(tmp_path):
    ref = " ".join(["w"] * 10)
    preds = [" ".join(["p"] * n) for n in (12, 10, 7, 15)]
    rows = [(str(k), {}, p, ref) for k, p in enumerate(preds)]
    run_dir = hand_run(tmp_path / "x", "x", rows)
    # a row without a reference does not count
    with open(run_dir / "predictions.jsonl", "a") as f:
        f.write(json.dumps({"id": "noref", "prediction": "a b c", "references": [], "metrics": {}}) + "\n")
    (row,) = analysis.extra_length_table([load_eval_run(run_dir)])
    assert row["n"] == 4
    assert row["mean_extra"] == pytest.approx((2 + 0 + 0 + 5) / 4)
    assert row["median_extra"] == 1.0
    assert row["share_longer"] == 0.5
    assert row["mean_pred_words"] == pytest.approx(11.0) and row["mean_ref_words"] == 10.0
    assert row["mean_abs_diff"] == pytest.approx((2 + 0 + 3 + 5) / 4)  # too short counts too
    assert row["min_ref_words"] == row["max_ref_words"] == 10


def test_extra_length_table_in_the_report(fake):
    *_, text = fake
    table = text[text.index('id="extra-length-table"'):]
    table = table[: table.index("</table>")]
    rl_row = table[table.index('data-system="rl-ppo"'):]
    rl_row = rl_row[: rl_row.index("</tr>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", rl_row)
    # rl-ppo's summaries are never longer than their references (see test_report_support)
    assert cells[:5] == ["rl-ppo", "4", "0.000", "0.000", "0.0%"]


# --------------------------------------------------------------------------- highlighting


def test_highlight_escapes_and_nests_overlapping_spans():
    text = "a <b>&c</b> Zed 7"
    html_ = analysis.highlight(text, [(2, 11, "copy"), (5, 7, "hall"), (16, 17, "hall")])
    assert html_ == ('a <mark class="m-copy">&lt;b&gt;</mark><mark class="m-copy m-hall">&amp;c</mark>'
                     '<mark class="m-copy">&lt;/b&gt;</mark> Zed <mark class="m-hall">7</mark>')
    assert analysis.highlight("<i>", []) == "&lt;i&gt;"


def test_highlight_spans_find_hallucinations_and_copies():
    source = ("The committee met in Geneva on Monday and agreed that the new rules on data protection "
              "will apply from next year to all member states.")
    summary = ("In Paris the committee agreed that the new rules on data protection will apply from next year, "
               "said 42 members.")
    spans = analysis.highlight_spans(summary, source, copy_min_words=8)
    got = [(summary[s:e], k) for s, e, k in spans]
    assert ("Paris", "hall") in got and ("42", "hall") in got
    assert ("agreed that the new rules on data protection will apply from next year,", "copy") in got
    assert not any(t == "Geneva" for t, _ in got)
    # facts are checked against the FULL source, not the shown excerpt
    assert analysis.highlight_spans("Geneva", source) == []
    # shorter copies than copy_min_words are not marked
    assert all(k == "hall" for *_, k in analysis.highlight_spans(summary, source, copy_min_words=20))


def test_excerpt_and_sampling():
    doc = "one  two\nthree four five"
    assert analysis.excerpt(doc, 3) == ("one  two\nthree", True)
    assert analysis.excerpt(doc, 5) == (doc, False)


def test_sample_ids_are_seeded_and_shared(tmp_path):
    a = hand_run(tmp_path / "a", "a", [(str(i), {}, "x", "y") for i in range(30)])
    b = hand_run(tmp_path / "b", "b", [(str(i), {}, "x", "y") for i in range(5, 40)])
    runs = load_eval_runs([a, b])
    s0 = analysis.sample_ids(runs, 5, seed=0)
    assert s0 == analysis.sample_ids(runs, 5, seed=0)
    assert len(s0) == 5 and all(5 <= int(i) < 30 for i in s0)  # ids both runs have
    assert any(analysis.sample_ids(runs, 5, seed=s) != s0 for s in (1, 2, 3))
    assert analysis.sample_ids(runs, 0) == []


def test_quantile_examples_follow_the_stated_rule(tmp_path):
    # differences (mean of the two RL systems minus sft) per id: a 0.0, b 0.3, c -0.2, d 0.1, e 0.2;
    # sorted: c -0.2, a 0.0, d 0.1, e 0.2, b 0.3 -> indices round(q * 4) = 1, 2, 3 -> a, d, e
    sft = [(i, {"la_rougeL": 0.5}, "x", "y") for i in "abcde"]
    r1 = [(i, {"la_rougeL": 0.5 + d}, "x", "y") for i, d in zip("abcde", (0.1, 0.2, -0.1, 0.0, 0.3))]
    r2 = [(i, {"la_rougeL": 0.5 + d}, "x", "y") for i, d in zip("abcde", (-0.1, 0.4, -0.3, 0.2, 0.1))]
    runs = load_eval_runs([hand_run(tmp_path / "s", "sft", sft), hand_run(tmp_path / "p", "ppo", r1),
                           hand_run(tmp_path / "g", "grpo", r2)])
    ids, rule = analysis.quantile_ids(runs, ["ppo", "grpo"], "sft", "la_rougeL")
    assert ids == ["a", "d", "e"]
    assert "25th/50th/75th percentile" in rule and "la_rougeL" in rule and "5 documents" in rule
    # ppo alone: c -0.1, d 0.0, a 0.1, b 0.2, e 0.3 -> d, a, b
    assert analysis.quantile_ids(runs, ["ppo"], "sft")[0] == ["d", "a", "b"]
    with pytest.raises(SumrlError, match="no such system"):
        analysis.quantile_ids(runs, ["ppo"], "nope")
    # in the report: the rule is printed and those documents are shown
    out = build_report([tmp_path / "s", tmp_path / "p", tmp_path / "g"], tmp_path / "r.html", n_examples=3,
                       examples_by=("sft", "la_rougeL"))
    html_text = out.read_text()
    assert "Chosen by a rule fixed in advance" in html_text
    assert re.findall(r'<article class="example" data-id="([^"]+)"', html_text) == ["a", "d", "e"]
    # the same from the command line; a malformed rule or an unknown system is one line
    dirs = [str(tmp_path / x) for x in "spg"]
    assert main(["report", *dirs, "--out", str(tmp_path / "c.html"), "--examples-by", "sft:la_rougeL"]) == 0
    assert re.findall(r'data-id="([^"]+)"', (tmp_path / "c.html").read_text().split('id="examples"')[1]) == \
        ["a", "d", "e"]
    # the job behind the command, called directly with its config
    from sumrl.report.build import ReportConfig, write_report

    d = write_report(ReportConfig(runs=dirs, out=str(tmp_path / "d.html"), n_examples=3, examples_by="sft:la_rougeL"))
    assert re.findall(r'data-id="([^"]+)"', d.read_text().split('id="examples"')[1]) == ["a", "d", "e"]
    assert main(["report", *dirs, "--out", str(tmp_path / "c.html"), "--examples-by", "sft"]) == 2
    assert main(["report", *dirs, "--out", str(tmp_path / "c.html"), "--examples-by", "nope:la_rougeL"]) == 2


# --------------------------------------------------------------------------- the HTML


def test_report_is_self_contained_and_escaped(fake):
    *_, text = fake
    tags = parse(text)
    names = {t for t, _ in tags}
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in tags:
        for k in ("src", "href"):
            v = attrs.get(k)
            if v is not None:
                assert v.startswith(("data:", "#")), (tag, k, v)
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)  # no event handler from a document
    assert "url(" not in text and "@import" not in text
    # the hostile document and config values are shown as text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text  # in a document
    # in a summary, where the "3" is also marked as a number the source does not have
    assert '&lt;script&gt;window.__pwned = <mark class="m-hall">3</mark>&lt;/script&gt;' in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text  # config.json "note" value
    assert "Content-Security-Policy" in text


def test_report_tables_have_every_metric_and_system(fake):
    _, runs, _, _, text = fake
    metrics = json.loads((runs[0] / "metrics.json").read_text())["metrics"]
    shown = set(re.findall(r'<tr data-metric="([^"]+)">\s*<td class="name"><span class="metric" title="[^"]*">',
                           text))
    assert shown == set(metrics)
    head = text[text.index('id="comparison-table"'):]
    head = head[: head.index("</thead>")]
    assert re.findall(r'data-system="([^"]+)"', head) == ["base", "sft", "rl-ppo"]
    # tooltips come from METRIC_DOCS
    assert 'title="words beyond the reference length, max(0, extra_words) (seed paper Table 1)"' in text
    # the paired table of rl-ppo vs sft with the main metrics
    assert 'data-rl="rl-ppo" data-baseline="sft"' in text
    assert text.count('class="paired-table"') == 1
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 5  # reward, KL, length, val loss, lengths


def test_missing_training_metrics_are_skipped_with_a_note(tmp_path):
    runs = make_runs(tmp_path, systems=("sft", "rl-ppo"))
    rl = tmp_path / "rl-train"
    rl.mkdir()
    (rl / "metrics.jsonl").write_text(json.dumps({"step": 1, "objective/reward": 0.5}) + "\n"
                                      + json.dumps({"step": 2, "objective/reward": 0.7}) + "\n")
    out = build_report(runs, tmp_path / "r.html", train_runs=[rl], n_examples=1, n_bootstrap=20)
    text = out.read_text()
    assert "skipped: no RL run logged objective/kl" in text
    assert "skipped: no RL run logged eval/mean_length or completions/mean_length" in text
    assert "skipped: no SFT training run given" in text
    assert len(re.findall(r'<img src="data:image/png', text)) == 2  # reward + length distribution
    assert "no config.json in this folder" in text
    assert load_train_run(rl).kind == "rl"


# --------------------------------------------------------------------------- bad input and CLI


def test_bad_run_folders_give_one_line_errors(tmp_path, capsys):
    good = make_runs(tmp_path, systems=("sft",))[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predictions.jsonl").write_text("{}\n")
    with pytest.raises(SumrlError, match=r"broken: not an eval run folder \(missing metrics.json"):
        build_report([good, broken], tmp_path / "r.html")
    rc = main(["report", str(good), str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope" in err and err.startswith("error: ")
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(SumrlError, match="broken/metrics.json.*malformed JSON"):
        load_eval_run(broken)
    with pytest.raises(SumrlError, match="system name 'sft' is also used by"):
        load_eval_runs([good, good])
    with pytest.raises(SumrlError, match="no metrics.jsonl"):
        load_train_run(tmp_path)
    assert not (tmp_path / "r.html").exists()


def test_cli_end_to_end_with_repeatable_flags(tmp_path, capsys):
    runs = make_runs(tmp_path, systems=("base", "sft", "rl-ppo"))
    rl_train, sft_train = make_train_runs(tmp_path)
    out = tmp_path / "rep" / "report.html"
    rc = main(["report", *map(str, runs), "--out", str(out), "--baseline", "sft", "--baseline", "base",
               "--rl", "rl-ppo", "--train-runs", str(rl_train), "--train-runs", str(sft_train),
               "--n-examples", "2", "--n-bootstrap", "50", "--title", "My <report>"])
    assert rc == 0, capsys.readouterr().err
    text = out.read_text()
    assert "<title>My &lt;report&gt;</title>" in text
    assert text.count('class="paired-table"') == 2  # rl-ppo vs sft, rl-ppo vs base
    assert text.count('<article class="example"') == 2
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # atomic write left no temp file
    rc = main(["report", str(runs[0]), "--out", str(out), "--baseline", "typo"])
    assert rc == 2 and "--baseline typo: no such system" in capsys.readouterr().err


def test_markdown_summary_matches_the_analysis(tmp_path, capsys):
    """The Markdown tables carry the same numbers as the analysis functions (hand-made runs)."""
    ref = " ".join(["w"] * 10)
    sft = hand_run(tmp_path / "sft", "sft", [(str(k), {"rouge1_f": v, "pred_words": 12.0}, " ".join(["p"] * 12), ref)
                                             for k, v in enumerate([0.2, 0.3, 0.4, 0.5])])
    rl = hand_run(tmp_path / "rl", "rl-ppo", [(str(k), {"rouge1_f": v, "pred_words": 9.0}, " ".join(["p"] * 9), ref)
                                              for k, v in enumerate([0.3, 0.4, 0.5, 0.6])])
    md_path = tmp_path / "out.md"
    rc = main(["report", str(sft), str(rl), "--out", str(tmp_path / "r.html"), "--markdown", str(md_path),
               "--n-bootstrap", "50", "--n-examples", "0"])
    assert rc == 0, capsys.readouterr().err
    md = md_path.read_text()
    # comparison table: the stored means and CIs of metrics.json
    m = json.loads((rl / "metrics.json").read_text())["metrics"]["rouge1_f"]
    assert f"| rl-ppo | {m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in md
    # paired test: every document gains exactly +0.1 ROUGE-1, so the delta and its CI are +0.1
    # and the difference is significant (p = 2/51, the smallest 50 resamples can give); 3 fewer words
    row = next(line for line in md.splitlines() if line.startswith("| rl-ppo | sft |"))
    assert "+0.100 [0.100, 0.100] p=0.04 **better**" in row and "-3.0 [-3.0, -3.0]" in row
    # extra length: sft 2 words beyond each 10-word reference, rl-ppo none
    assert "| sft | 2.0 | 2.0 | 1.00 | 2.0 | 12.0 | 10.0 (10-10) |" in md
    assert "| rl-ppo | 0.0 | 0.0 | 0.00 | 1.0 | 9.0 | 10.0 (10-10) |" in md


def test_rl_reward_plot_prefers_the_held_out_curve(tmp_path):
    from sumrl.report.plots import rl_plots
    from sumrl.report.runs import TrainRun

    with_eval = TrainRun(tmp_path, "grpo", [
        {"step": 0, "eval/reward": -5.0, "eval/mean_length": 130.0},
        {"step": 1, "objective/reward": -4.0, "objective/kl": 0.0, "completions/mean_length": 160.0},
        {"step": 2, "objective/reward": -7.0, "objective/kl": 0.5, "completions/mean_length": 150.0,
         "eval/reward": -3.0, "eval/mean_length": 120.0}], None, None)
    without = TrainRun(tmp_path, "ppo", [
        {"step": 1, "objective/reward": -4.0, "objective/kl": 0.0, "completions/mean_length": 160.0}], None, None)
    reward, kl, length = rl_plots([with_eval, without])
    assert reward.png and "eval/reward" in reward.note and "objective/reward faint" in reward.note
    assert "grpo (held-out)" in reward.alt and "ppo" in reward.alt
    assert "eval/mean_length" in length.note and kl.note == "from objective/kl"
