"""`sumrl human`: study creation, pair selection, the HTTP API's security and concurrency,
statistics on hand-computed examples, and the export of preference pairs.

The web app runs under the real server (waitress) on 127.0.0.1 with a free port; requests are
real HTTP. Browser-driven tests are in test_human_browser.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from sumrl.cli import main
from sumrl.errors import DataError, SumrlError
from sumrl.human import db as hdb
from sumrl.human.app import MAX_BODY_BYTES
from sumrl.human.export import margin_from_ratings
from sumrl.human.stats import cohen_kappa, compute_stats, krippendorff_alpha, wilson_interval
from sumrl.human.study import Candidate, assign, candidate_pairs, load_runs, select_pairs
from test_human_support import csrf_of, http, make_runs, make_study, running_server, submission, write_run


def length_scorer(calls: list):
    """A deterministic stand-in for a reward model: longer summary = higher score."""
    def score(documents, summaries, queries):
        calls.append((list(documents), list(summaries), list(queries)))
        return [len(s) / 10.0 for s in summaries]
    return score


# ----------------------------------------------------------------------------- runs and pairs

def test_load_runs_and_candidate_pairs(tmp_path):
    runs = make_runs(tmp_path, n_docs=3, systems=("alpha", "beta", "gamma"))
    docs = load_runs(runs)
    assert sorted(docs) == ["doc0", "doc1", "doc2"]
    assert sorted(docs["doc1"].summaries) == ["alpha", "beta", "gamma"]
    cands = candidate_pairs(docs)
    assert len(cands) == 3 * 3  # C(3, 2) system pairs per document
    assert all(c.system_a < c.system_b for c in cands)


def test_identical_summaries_are_not_paired(tmp_path):
    rows = [{"id": "d", "document": "doc", "prediction": "same text"}]
    docs = load_runs([write_run(tmp_path / "a", "a", rows), write_run(tmp_path / "b", "b", rows)])
    assert candidate_pairs(docs) == []


def test_bad_runs_are_user_errors(tmp_path):
    rows = [{"id": "d", "document": "doc", "prediction": "p"}]
    a = write_run(tmp_path / "a", "same", rows)
    b = write_run(tmp_path / "b", "same", rows)
    with pytest.raises(SumrlError, match="appears in two runs"):
        load_runs([a, b])
    c = write_run(tmp_path / "c", "other", [{"id": "d", "document": "a different text", "prediction": "p"}])
    with pytest.raises(DataError, match="different text"):
        load_runs([a, c])
    with pytest.raises(DataError, match="predictions.jsonl"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "predictions.jsonl").write_text('{"id": "d", "document": "x"}\n')
    with pytest.raises(DataError, match="line 1, field 'prediction'"):
        load_runs([tmp_path / "bad"])


def test_select_uncertain_orders_by_closeness_to_half(tmp_path):
    docs = load_runs(make_runs(tmp_path, n_docs=3, systems=("alpha", "beta", "gamma")))
    cands = candidate_pairs(docs)
    calls: list = []
    chosen = select_pairs(cands, docs, strategy="uncertain", score_fn=length_scorer(calls), seed=0)
    # One batched call with every distinct summary (3 systems x 3 documents).
    assert len(calls) == 1 and len(calls[0][1]) == 9 and calls[0][2] == [None] * 9
    assert len(chosen) == len(cands)

    def expected_p(c: Candidate) -> float:
        la, lb = (len(docs[c.doc_id].summaries[s].text) / 10.0 for s in (c.system_a, c.system_b))
        return 1 / (1 + math.exp(-(la - lb)))

    for c in chosen:
        assert c.rm_prob == pytest.approx(expected_p(c))
    gaps = [abs(c.rm_prob - 0.5) for c in chosen]
    assert gaps == sorted(gaps)
    # The most uncertain pair is the one with the smallest length difference.
    best = min(cands, key=lambda c: abs(expected_p(c) - 0.5))
    assert abs(chosen[0].rm_prob - 0.5) == pytest.approx(abs(expected_p(best) - 0.5))

    # pairs_per_doc keeps each document's most uncertain pair(s).
    one = select_pairs(cands, docs, strategy="uncertain", score_fn=length_scorer([]), pairs_per_doc=1)
    assert sorted(c.doc_id for c in one) == ["doc0", "doc1", "doc2"]
    for c in one:
        same_doc = [x for x in cands if x.doc_id == c.doc_id]
        assert abs(c.rm_prob - 0.5) == pytest.approx(min(abs(expected_p(x) - 0.5) for x in same_doc))
    assert len(select_pairs(cands, docs, strategy="uncertain", score_fn=length_scorer([]), max_pairs=4)) == 4

    with pytest.raises(SumrlError, match="reward model"):
        select_pairs(cands, docs, strategy="uncertain")


def test_select_random_is_seeded_and_capped(tmp_path):
    docs = load_runs(make_runs(tmp_path, n_docs=4, systems=("alpha", "beta", "gamma")))
    cands = candidate_pairs(docs)
    key = lambda sel: [(c.doc_id, c.system_a, c.system_b) for c in sel]  # noqa: E731
    a = select_pairs(cands, docs, strategy="random", seed=5)
    assert key(a) == key(select_pairs(cands, docs, strategy="random", seed=5))
    assert key(a) != key(select_pairs(cands, docs, strategy="random", seed=6))
    assert sorted(key(a)) == sorted(key(cands))
    two = select_pairs(cands, docs, strategy="random", pairs_per_doc=2, seed=1)
    assert len(two) == 8 and all(sum(c.doc_id == d for c in two) == 2 for d in docs)


def test_assign_spreads_pairs_over_raters():
    out = assign(n_pairs=10, n_raters=4, raters_per_pair=2)
    per_pair = [sum(p in r for r in out) for p in range(10)]
    assert per_pair == [2] * 10
    assert max(map(len, out)) - min(map(len, out)) <= 1
    assert assign(3, 2, 0) == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(SumrlError):
        assign(3, 2, 3)


# ----------------------------------------------------------------------------- create (CLI)

def test_cli_create_prints_one_link_per_rater(tmp_path, capsys):
    runs = make_runs(tmp_path, n_docs=3, systems=("alpha", "beta", "gamma"))
    db_path = tmp_path / "ratings.sqlite"
    rc = main(["human", "create", "--runs", *map(str, runs), "--db", str(db_path), "--pairs-per-doc", "2",
               "--raters", "3", "--raters-per-pair", "2", "--base-url", "http://127.0.0.1:9999"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["rater1", "rater2", "rater3"]
    tokens = [ln.split("\t")[1].removeprefix("http://127.0.0.1:9999/r/") for ln in lines]
    assert len(set(tokens)) == 3 and all(len(t) >= 40 for t in tokens)
    conn = hdb.open_study(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 6  # 3 docs x 2 pairs
    assert conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 12  # 6 pairs x 2 raters
    conn.close()
    # Tokens are stored hashed only: the database file does not contain an access link.
    blob = b"".join(Path(str(db_path) + s).read_bytes() for s in ("", "-wal") if Path(str(db_path) + s).exists())
    assert not any(t.encode() in blob for t in tokens)
    # An existing study (which may hold judgments) is never overwritten.
    rc = main(["human", "create", "--runs", *map(str, runs), "--db", str(db_path)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_cli_create_uncertain_uses_reward_model(tmp_path, capsys, monkeypatch):
    import sumrl.human.study as hstudy

    loaded = []

    def fake_loader(path):
        loaded.append(path)
        return length_scorer([])

    monkeypatch.setattr(hstudy, "load_rm_score_fn", fake_loader)
    runs = make_runs(tmp_path, n_docs=2, systems=("alpha", "beta", "gamma"))
    db_path = tmp_path / "u.sqlite"
    assert main(["human", "create", "--runs", *map(str, runs), "--db", str(db_path), "--select", "uncertain",
                 "--rm", "my_rm"]) == 0
    assert loaded == ["my_rm"]
    conn = hdb.open_study(db_path)
    probs = [r[0] for r in conn.execute("SELECT rm_prob FROM pairs ORDER BY rank")]
    conn.close()
    assert len(probs) == 6 and all(p is not None for p in probs)
    gaps = [abs(p - 0.5) for p in probs]
    assert gaps == sorted(gaps)
    assert main(["human", "create", "--runs", *map(str, runs), "--db", str(tmp_path / "x.sqlite"),
                 "--select", "uncertain"]) == 2
    assert "--rm" in capsys.readouterr().err


def test_create_from_runs_called_directly(tmp_path):
    """The job behind `sumrl human create`: counts, default rater names, the config kept in the study."""
    from sumrl.human.study import HumanCreateConfig, create_from_runs

    runs = make_runs(tmp_path, n_docs=2, systems=("alpha", "beta", "gamma"))
    cfg = HumanCreateConfig(runs=[str(r) for r in runs], db=str(tmp_path / "s.sqlite"), raters=2, max_pairs=4)
    study = create_from_runs(cfg)
    assert (study.n_documents, study.n_candidates, study.n_pairs, study.n_assignments) == (2, 6, 4, 8)
    assert list(study.links) == ["rater1", "rater2"]
    conn = hdb.open_study(cfg.db)
    assert json.loads(hdb.get_meta(conn, "info"))["config"]["max_pairs"] == 4
    conn.close()


# ----------------------------------------------------------------------------- HTTP API

@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path, raters=2, systems=("alpha", "beta"), n_docs=3)


def count_judgments(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    finally:
        conn.close()


def test_security_refuses_tokenless_forged_and_foreign_requests(study):
    db_path, tokens = study
    t1, t2 = tokens["rater1"], tokens["rater2"]
    with running_server(db_path) as base:
        csrf1, csrf2 = csrf_of(base, t1), csrf_of(base, t2)
        assert csrf1 != csrf2
        _, nxt = http("GET", f"{base}/api/next", token=t1)
        aid = nxt["assignment"]["id"]
        _, nxt2 = http("GET", f"{base}/api/next", token=t2)
        other_aid = nxt2["assignment"]["id"]
        body = submission(aid)

        assert http("GET", f"{base}/api/next")[0] == 403                          # no token
        assert http("GET", f"{base}/api/next", token="x" * 43)[0] == 403          # unknown token
        assert http("GET", f"{base}/r/{'x' * 43}")[0] == 403
        assert http("POST", f"{base}/api/submit", csrf=csrf1, body=body)[0] == 403
        assert http("POST", f"{base}/api/submit", token=t1, body=body)[0] == 403  # no CSRF token
        assert http("POST", f"{base}/api/submit", token=t1, csrf="0" * 64, body=body)[0] == 403  # forged
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf2, body=body)[0] == 403     # someone else's
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=body,
                    headers={"Origin": "http://evil.example"})[0] == 403
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 403
        # Another rater's assignment can be neither read nor judged (404, as if it did not exist).
        assert http("GET", f"{base}/api/assignment/{other_aid}", token=t1)[0] == 404
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(other_aid))[0] == 404
        assert count_judgments(db_path) == 0

        status, page = http("GET", f"{base}/r/{t1}")
        assert status == 200
        # System names (and which summary is "a") never reach the rater; the fake summaries
        # quote their system name, so check the payload's fields rather than its text.
        assert set(nxt["assignment"]) == {"id", "position", "document", "query", "left", "right"}
        assert "system" not in json.dumps(nxt) and "alpha" not in page and "beta" not in page
        status, resp = http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=body,
                            headers={"Origin": base})
        assert status == 201 and resp["progress"] == {"done": 1, "total": 3}
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=body)[0] == 409  # no duplicate
        assert count_judgments(db_path) == 1


def test_security_headers(study):
    db_path, tokens = study
    with running_server(db_path) as base:
        req_headers = {}
        import urllib.request

        with urllib.request.urlopen(f"{base}/r/{tokens['rater1']}", timeout=10) as resp:
            req_headers = dict(resp.headers)
    assert "script-src 'self'" in req_headers["Content-Security-Policy"]
    assert "unsafe-inline" not in req_headers["Content-Security-Policy"]
    assert req_headers["Referrer-Policy"] == "no-referrer"
    assert req_headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("mutate, status", [
    (lambda b: b["ratings"]["left"].update(accuracy=8), 400),
    (lambda b: b["ratings"]["right"].update(coverage=0), 400),
    (lambda b: b["ratings"]["left"].update(coherence=3.5), 400),
    (lambda b: b["ratings"]["left"].update(readability="5"), 400),
    (lambda b: b["ratings"]["left"].update(readability=True), 400),
    (lambda b: b["ratings"]["left"].pop("accuracy"), 400),
    (lambda b: b["ratings"]["left"].update(fluency=4), 400),
    (lambda b: b.update(choice="both"), 400),
    (lambda b: b.update(extra=1), 400),
    (lambda b: b.update(comment="x" * 2001), 400),
    (lambda b: b.update(assignment_id="1"), 400),
    (lambda b: b.update(comment="x" * (MAX_BODY_BYTES + 10)), 413),
])
def test_invalid_submissions_are_rejected(study, mutate, status):
    db_path, tokens = study
    t = tokens["rater1"]
    with running_server(db_path) as base:
        csrf = csrf_of(base, t)
        aid = http("GET", f"{base}/api/next", token=t)[1]["assignment"]["id"]
        body = submission(aid)
        mutate(body)
        assert http("POST", f"{base}/api/submit", token=t, csrf=csrf, body=body)[0] == status
        assert http("POST", f"{base}/api/submit", token=t, csrf=csrf, raw=b"{not json")[0] == 400
        assert count_judgments(db_path) == 0
        assert http("POST", f"{base}/api/submit", token=t, csrf=csrf, body=submission(aid))[0] == 201


def test_concurrent_raters_lose_and_duplicate_nothing(tmp_path):
    db_path, tokens = make_study(tmp_path, raters=3, systems=("alpha", "beta", "gamma"), n_docs=3)
    with running_server(db_path) as base:
        plans = {}
        for name, t in tokens.items():
            csrf = csrf_of(base, t)
            conn = sqlite3.connect(db_path)
            aids = [r[0] for r in conn.execute(
                "SELECT assignment_id FROM assignments a JOIN raters r ON r.rater_id = a.rater_id "
                "WHERE r.name = ? ORDER BY position", (name,))]
            conn.close()
            plans[name] = (t, csrf, aids)
        results: dict[str, list[int]] = {name: [] for name in tokens}
        # Two threads per rater submit the same assignments at the same moment: every judgment
        # must be stored exactly once (one 201, one 409), across three raters writing at once.
        barrier = threading.Barrier(2 * len(tokens))

        def work(name: str) -> None:
            t, csrf, aids = plans[name]
            barrier.wait()
            for k, aid in enumerate(aids):
                body = submission(aid, choice=("left", "right", "tie")[k % 3], left=1 + k % 7, right=7 - k % 7,
                                  comment=f"{name}-{aid}")
                results[name].append(http("POST", f"{base}/api/submit", token=t, csrf=csrf, body=body)[0])

        threads = [threading.Thread(target=work, args=(n,)) for n in tokens for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        for name, (_, _, aids) in plans.items():
            assert sorted(results[name]).count(201) == len(aids), results[name]
            assert sorted(results[name]).count(409) == len(aids), results[name]
            _, nxt = http("GET", f"{base}/api/next", token=plans[name][0])
            assert nxt["assignment"] is None and nxt["progress"]["done"] == len(aids) == 9
    conn = sqlite3.connect(db_path)
    total = conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0]
    assert conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == total == 27
    assert conn.execute("SELECT COUNT(DISTINCT assignment_id) FROM judgments").fetchone()[0] == total
    assert conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == total * 8
    # Each stored comment belongs to its own assignment's rater: nothing was crossed over.
    rows = conn.execute("SELECT j.comment, r.name, a.assignment_id FROM judgments j JOIN assignments a "
                        "ON a.assignment_id = j.assignment_id JOIN raters r ON r.rater_id = a.rater_id").fetchall()
    assert all(c == f"{n}-{a}" for c, n, a in rows)
    conn.close()


def test_left_right_is_mapped_back_to_the_right_summary(study, tmp_path):
    """The rater sees left/right in a random order; the judgment must land on the summary that
    was actually shown on the chosen side, for both orientations."""
    db_path, tokens = study
    t = tokens["rater1"]
    shown = {}
    with running_server(db_path) as base:
        csrf = csrf_of(base, t)
        while True:
            nxt = http("GET", f"{base}/api/next", token=t)[1]["assignment"]
            if nxt is None:
                break
            choice = "left" if nxt["position"] % 2 else "right"
            shown[nxt["position"]] = (nxt[choice], nxt["right" if choice == "left" else "left"])
            # The chosen side is rated 6 and the other 2, whichever side was chosen.
            left, right = (6, 2) if choice == "left" else (2, 6)
            assert http("POST", f"{base}/api/submit", token=t, csrf=csrf,
                        body=submission(nxt["id"], choice=choice, left=left, right=right))[0] == 201
    conn = sqlite3.connect(db_path)
    orientations = [r[0] for r in conn.execute(
        "SELECT left_is_a FROM assignments a JOIN raters r ON r.rater_id = a.rater_id WHERE r.name = 'rater1'")]
    conn.close()
    assert sorted(orientations) == [0, 1, 1] or sorted(orientations) == [0, 0, 1], "left/right must be balanced"
    out = tmp_path / "pairs.jsonl"
    assert main(["human", "export", "--db", str(db_path), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["meta"]["rater"] == "rater1" for r in rows)
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == sorted(shown.values())
    for r in rows:
        assert r["meta"]["ratings"]["chosen"]["accuracy"] == 6 and r["meta"]["ratings"]["rejected"]["accuracy"] == 2


# ----------------------------------------------------------------------------- statistics

def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-4)


def test_cohen_kappa_hand_computed():
    # p_o = 3/4, p_e = .5 * .75 + .5 * .25 = .5 -> kappa = .5
    assert cohen_kappa(list("aabb"), list("aaba")) == pytest.approx(0.5)
    assert cohen_kappa(list("ab"), list("ab")) == pytest.approx(1.0)
    assert cohen_kappa(list("aa"), list("aa")) is None  # chance agreement 1: undefined
    assert cohen_kappa([], []) is None


def test_krippendorff_alpha_hand_computed():
    # Nominal, 2 coders x 4 units: coincidences o_aa=4, o_bb=2, o_ab=o_ba=1; n_a=5, n_b=3, n=8:
    # alpha = 1 - (n-1) * 2 / (2 * 5 * 3) = 1 - 14/30 = 8/15.
    units = {1: {"r1": 0, "r2": 0}, 2: {"r1": 0, "r2": 0}, 3: {"r1": 1, "r2": 1}, 4: {"r1": 1, "r2": 0}}
    assert krippendorff_alpha(units, "nominal") == pytest.approx(8 / 15)
    # Interval, 2 coders x 3 units (1,1), (2,2), (3,2): D_o = 2/6, D_e = 34/30 -> alpha = 12/17.
    units = {1: {"r1": 1, "r2": 1}, 2: {"r1": 2, "r2": 2}, 3: {"r1": 3, "r2": 2}}
    assert krippendorff_alpha(units, "interval") == pytest.approx(12 / 17)
    # A unit judged by one coder only is not pairable and changes nothing.
    units[4] = {"r1": 7}
    assert krippendorff_alpha(units, "interval") == pytest.approx(12 / 17)
    assert krippendorff_alpha({1: {"r1": 1}}, "nominal") is None


def _judge(conn, rater: str, doc_id: str, choice: str, acc_a: int, acc_b: int, other: int = 4) -> None:
    """Insert a judgment directly (canonical a/b orientation) for the statistics tests."""
    with hdb.write(conn):
        row = conn.execute(
            "SELECT a.assignment_id, p.summary_a, p.summary_b FROM assignments a JOIN raters r ON "
            "r.rater_id = a.rater_id JOIN pairs p ON p.pair_id = a.pair_id JOIN documents d ON d.doc_key = p.doc_key "
            "WHERE r.name = ? AND d.id = ?", (rater, doc_id)).fetchone()
        jid = conn.execute("INSERT INTO judgments (assignment_id, choice) VALUES (?, ?)",
                           (row["assignment_id"], choice)).lastrowid
        for sid, acc in ((row["summary_a"], acc_a), (row["summary_b"], acc_b)):
            for crit in hdb.CRITERIA:
                conn.execute("INSERT INTO ratings VALUES (?, ?, ?, ?)",
                             (jid, sid, crit, acc if crit == "accuracy" else other + (sid % 2)))


def test_stats_on_hand_made_judgments(tmp_path, capsys):
    db_path, _ = make_study(tmp_path, raters=3, systems=("alpha", "beta"), n_docs=3)
    conn = hdb.open_study(db_path)
    # a = alpha, b = beta on every document.
    choices = {"rater1": ["a", "a", "b"], "rater2": ["a", "b", "b"], "rater3": ["tie", "a", "b"]}
    acc = {"doc0": (6, 3), "doc1": (2, 5), "doc2": (4, 4)}  # identical across raters -> alpha 1
    for rater, cs in choices.items():
        for d, c in enumerate(cs):
            _judge(conn, rater, f"doc{d}", c, *acc[f"doc{d}"])
    s = compute_stats(conn)
    conn.close()

    assert s["counts"] == {"documents": 3, "pairs": 3, "raters": 3, "assignments": 9, "judgments": 9, "ties": 1}
    w = s["win_rates"]["alpha"]
    assert (w["wins"], w["losses"], w["ties"], w["n"]) == (4, 4, 1, 9)
    assert w["win_rate"] == pytest.approx(0.5)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx(wilson_interval(4.5, 9))
    assert s["win_rates"]["beta"]["win_rate"] == pytest.approx(0.5)
    kappas = {(k["rater_1"], k["rater_2"]): k["kappa"] for k in s["agreement"]["cohen_kappa"]}
    # r1 [a,a,b] vs r2 [a,b,b]: p_o 2/3, p_e 4/9 -> 0.4; r1 vs r3 [tie,a,b]: p_o 2/3, p_e 1/3 -> 0.5;
    # r2 vs r3: p_o 1/3, p_e 1/3 -> 0.
    assert kappas[("rater1", "rater2")] == pytest.approx(0.4)
    assert kappas[("rater1", "rater3")] == pytest.approx(0.5)
    assert kappas[("rater2", "rater3")] == pytest.approx(0.0)
    # Nominal alpha by hand: o_aa=2, o_bb=3, o_at=o_ta=o_ab=o_ba=1; n_a=4, n_b=4, n_tie=1, n=9:
    # alpha = 1 - 8 * 4 / (81 - 33) = 1/3.
    ka = s["agreement"]["krippendorff_alpha"]
    assert ka["choice_nominal"] == pytest.approx(1 / 3)
    assert ka["ratings"]["accuracy"]["interval"] == pytest.approx(1.0)
    assert ka["ratings"]["accuracy"]["ordinal"] == pytest.approx(1.0)
    assert s["mean_ratings"]["alpha"]["accuracy"]["mean"] == pytest.approx(4.0)
    assert s["mean_ratings"]["beta"]["accuracy"]["mean"] == pytest.approx(4.0)

    out_json = tmp_path / "stats.json"
    assert main(["human", "stats", "--db", str(db_path), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "Cohen's kappa rater1 vs rater2: 0.400" in printed
    assert "Krippendorff's alpha (nominal): 0.333" in printed
    assert json.loads(out_json.read_text())["win_rates"]["alpha"]["wins"] == 4


def test_stats_and_export_need_a_study(tmp_path, capsys):
    assert main(["human", "stats", "--db", str(tmp_path / "nope.sqlite")]) == 2
    (tmp_path / "junk.sqlite").write_text("not a database")
    assert main(["human", "export", "--db", str(tmp_path / "junk.sqlite"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such study" in err and "not a sumrl human-evaluation study" in err


# ----------------------------------------------------------------------------- export

def test_margin_from_ratings():
    six = {c: 6 for c in hdb.CRITERIA}
    three = {c: 3 for c in hdb.CRITERIA}
    assert margin_from_ratings(six, three) == pytest.approx(0.5)
    assert margin_from_ratings(three, six) == 0.0  # chosen overall but rated lower: clipped
    assert margin_from_ratings({c: 7 for c in hdb.CRITERIA}, {c: 1 for c in hdb.CRITERIA}) == 1.0


def test_export_format(tmp_path):
    db_path, _ = make_study(tmp_path, raters=2, systems=("alpha", "beta"), n_docs=3)
    conn = hdb.open_study(db_path)
    _judge(conn, "rater1", "doc0", "a", 6, 3, other=5)
    _judge(conn, "rater1", "doc1", "b", 2, 5)
    _judge(conn, "rater2", "doc0", "tie", 4, 4)
    conn.close()
    out = tmp_path / "pairs.jsonl"
    assert main(["human", "export", "--db", str(db_path), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2  # the tie is not exported
    for r in rows:
        assert set(r) == {"id", "document", "query", "chosen", "rejected", "margin", "source", "meta"}
        assert r["source"] == "human" and r["query"] is None
        assert set(r["meta"]) >= {"rater", "systems", "ratings"}
        assert r["chosen"].startswith(r["meta"]["systems"]["chosen"])  # fake summaries start with the system
        assert r["rejected"].startswith(r["meta"]["systems"]["rejected"])
        assert set(r["meta"]["ratings"]["chosen"]) == set(hdb.CRITERIA)
    r0 = next(r for r in rows if r["id"] == "doc0")
    assert r0["meta"]["systems"] == {"chosen": "alpha", "rejected": "beta"} and r0["meta"]["rater"] == "rater1"
    assert r0["document"].startswith("Document 0.")
    # accuracy 6 vs 3, the other criteria 5 + parity of the summary id: mean difference computed here.
    ch, rj = r0["meta"]["ratings"]["chosen"], r0["meta"]["ratings"]["rejected"]
    expected = max(0.0, sum(ch[c] - rj[c] for c in hdb.CRITERIA) / 4) / 6
    assert r0["margin"] == pytest.approx(expected) and r0["margin"] > 0
    r1 = next(r for r in rows if r["id"] == "doc1")
    assert r1["meta"]["systems"] == {"chosen": "beta", "rejected": "alpha"}

    assert main(["human", "export", "--db", str(db_path), "--out", str(out), "--margin", "none"]) == 0
    assert all(json.loads(x)["margin"] is None for x in out.read_text().splitlines())




def test_stats_and_export_jobs_called_directly(tmp_path):
    """`human stats` / `human export` as library calls: undefined statistics (one rater: no kappa,
    NaN alpha) are null in the JSON file, never the invalid token NaN."""
    from sumrl.human.export import HumanExportConfig, export_study
    from sumrl.human.stats import HumanStatsConfig, nan_to_none, study_stats

    assert nan_to_none({"a": [1.0, math.nan, (math.nan,)], "b": "x"}) == {"a": [1.0, None, [None]], "b": "x"}
    db_path, _ = make_study(tmp_path, raters=1, systems=("alpha", "beta"), n_docs=2)
    conn = hdb.open_study(db_path)
    _judge(conn, "rater1", "doc0", "a", 6, 3)
    conn.close()
    out = tmp_path / "s.json"
    s = study_stats(HumanStatsConfig(db=str(db_path), json=str(out)))
    assert s["counts"]["judgments"] == 1 and s["agreement"]["cohen_kappa"] == []
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["win_rates"]["alpha"]["wins"] == 1
    n = export_study(HumanExportConfig(db=str(db_path), out=str(tmp_path / "p.jsonl")))
    assert n == {"judgments": 1, "exported": 1, "ties_skipped": 0}


def test_open_server_names_a_port_in_use(study):
    from sumrl.human.server import HumanServeConfig, open_server

    db_path, _ = study
    with running_server(db_path) as base:
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(SumrlError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_server(HumanServeConfig(db=str(db_path), port=port))


def test_export_trains_a_preference_reward_model(tmp_path):
    """The loop closes: human judgments -> export -> `sumrl rm --kind preference`."""
    db_path, tokens = make_study(tmp_path, raters=2, systems=("alpha", "beta", "gamma"), n_docs=3)
    with running_server(db_path) as base:
        for t in tokens.values():
            csrf = csrf_of(base, t)
            while (nxt := http("GET", f"{base}/api/next", token=t)[1]["assignment"]) is not None:
                # Prefer the longer summary, so the preference is learnable.
                choice = "left" if len(nxt["left"]) > len(nxt["right"]) else "right"
                assert http("POST", f"{base}/api/submit", token=t, csrf=csrf,
                            body=submission(nxt["id"], choice=choice))[0] == 201
    pairs = tmp_path / "pairs.jsonl"
    assert main(["human", "export", "--db", str(db_path), "--out", str(pairs)]) == 0
    assert len(pairs.read_text().splitlines()) == 18
    out_dir = tmp_path / "rm"
    rc = main(["rm", "--kind", "preference", "--pairs", str(pairs), "--out", str(out_dir), "--steps", "20",
               "--batch-size", "4", "--test-fraction", "0.34"])
    assert rc == 0
    import json

    from sumrl.rewards.reward_model import load_reward_model

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics  # held-out pairwise accuracy and training stats are recorded
    rm = load_reward_model(out_dir)
    rows = [json.loads(l) for l in pairs.read_text().splitlines()]
    scores = rm.score([r["document"] for r in rows[:4]], [r["chosen"] for r in rows[:4]], [None] * 4)
    assert len(scores) == 4 and all(isinstance(x, float) for x in scores)


def test_serve_command_binds_localhost_and_stops_on_ctrl_c(study):
    """`sumrl human serve` as a real process: loopback by default, serves, exits cleanly on SIGINT."""
    import re
    import signal
    import subprocess
    import sys

    db_path, tokens = study
    proc = subprocess.Popen([sys.executable, "-m", "sumrl.cli", "human", "serve", "--db", str(db_path),
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"at (http://127\.0\.0\.1:(\d+)) ", line)
        assert m, line
        base = m.group(1)
        assert http("GET", f"{base}/healthz")[0] == 200
        assert http("GET", f"{base}/api/next", token=tokens["rater1"])[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_loopback_detection_for_the_bind_warning():
    from sumrl.human.server import HumanServeConfig
    from sumrl.human.server import is_loopback

    assert HumanServeConfig().host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_out_of_range_ids_and_forged_host_are_refused(study):
    """Issue #19: ids past SQLite's 64-bit range answered 500 (HTML); the Origin check trusted the
    request's own Host header, so a DNS-rebinding page (Host and Origin both evil) passed it."""
    db_path, tokens = study
    t1 = tokens["rater1"]
    with running_server(db_path) as base:
        csrf1 = csrf_of(base, t1)
        aid = http("GET", f"{base}/api/next", token=t1)[1]["assignment"]["id"]
        for big in ("99999999999999999999999", str(2**63)):
            status, body = http("GET", f"{base}/api/assignment/{big}", token=t1)
            assert status == 400 and isinstance(body, dict) and "error" in body, (status, body)
        assert http("GET", f"{base}/api/assignment/{2**63 - 1}", token=t1)[0] == 404  # in range: just absent
        for big in (2**70, 2**63, -1, 0):
            status, body = http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(big))
            assert status == 400 and isinstance(body, dict) and "assignment_id" in body["error"], (big, status, body)
        port = base.rsplit(":", 1)[1]
        forged = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        status, body = http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(aid), headers=forged)
        assert status == 403 and "cross-origin" in body["error"]
        assert count_judgments(db_path) == 0
        # the study's --base-url (http://127.0.0.1:8765 in make_study) and the served address pass
        for origin in (base, base.replace("127.0.0.1", "localhost")):
            assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(aid),
                        headers={"Origin": origin})[0] in (201, 409)
        assert count_judgments(db_path) == 1


def test_public_origin_option_allows_a_proxy_origin(study):
    from sumrl.human.server import RatingServer

    db_path, tokens = study
    t1 = tokens["rater1"]
    server = RatingServer(db_path, host="127.0.0.1", port=0, public_origins=["https://rate.example.org/"]).start()
    try:
        base = server.url
        csrf1 = csrf_of(base, t1)
        aid = http("GET", f"{base}/api/next", token=t1)[1]["assignment"]["id"]
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(aid),
                    headers={"Origin": "https://rate.example.org:8443"})[0] == 403  # another port: another origin
        assert http("POST", f"{base}/api/submit", token=t1, csrf=csrf1, body=submission(aid),
                    headers={"Origin": "https://rate.example.org"})[0] == 201
    finally:
        server.stop()
