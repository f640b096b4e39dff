"""Shared helpers for tests/test_human*.py: fake `sumrl eval` run folders, a study, a live server
and a tiny HTTP client. (No tests here; pytest collects the file harmlessly.)"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sumrl.human.db import CRITERIA
from sumrl.human.study import candidate_pairs, create_study, load_runs, select_pairs

HTML_DOC = "<script>alert(1)</script><b>x</b><img src=x onerror=\"window.__pwned=1\">"


def write_run(run_dir: Path, system: str, rows: list[dict]) -> Path:
    """A run folder as `sumrl eval` writes it (the fields the human module reads, plus some)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            full = {"system": system, "query": None, "references": ["ref"], "raw_prediction": r["prediction"],
                    "strategy": "none", "n_input_tokens": 10, "n_output_tokens": 5, "finished": True,
                    "metrics": {}, **r}
            f.write(json.dumps(full) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"system": system, "n": len(rows), "metrics": {}}))
    (run_dir / "config.json").write_text("{}")
    return run_dir


def make_runs(root: Path, n_docs: int = 3, systems: tuple[str, ...] = ("alpha", "beta", "gamma"),
              html_doc: bool = False) -> list[Path]:
    """One run per system over the same documents; summaries of different lengths per system."""
    runs = []
    for k, system in enumerate(systems):
        rows = []
        for d in range(n_docs):
            document = f"Document {d}. " + " ".join(f"Sentence {i} of document {d}." for i in range(40))
            if html_doc and d == 0:
                document = HTML_DOC + "\n" + document
            rows.append({"id": f"doc{d}", "document": document,
                         "prediction": f"{system} summary of doc {d}" + " more" * (k * (d + 1)) +
                                       (" <i>tag</i>" if html_doc else "")})
        runs.append(write_run(root / f"run_{system}", system, rows))
    return runs


def make_study(tmp: Path, *, raters: int = 2, systems: tuple[str, ...] = ("alpha", "beta"), n_docs: int = 3,
               html_doc: bool = False, raters_per_pair: int = 0, base_url: str = "http://127.0.0.1:1"
               ) -> tuple[Path, dict[str, str]]:
    """A study database and the rater -> token map."""
    docs = load_runs(make_runs(tmp / "runs", n_docs=n_docs, systems=systems, html_doc=html_doc))
    selected = select_pairs(candidate_pairs(docs), docs, strategy="random", seed=1)
    db_path = tmp / "study.sqlite"
    st = create_study(db_path, docs, selected, raters=[f"rater{i + 1}" for i in range(raters)],
                      raters_per_pair=raters_per_pair, base_url=base_url, seed=3)
    return db_path, {name: link.rsplit("/", 1)[1] for name, link in st.links.items()}


@contextmanager
def running_server(db_path: Path) -> Iterator[str]:
    from sumrl.human.server import RatingServer

    server = RatingServer(db_path, host="127.0.0.1", port=0, threads=8).start()
    try:
        yield server.url
    finally:
        server.stop()


def http(method: str, url: str, *, token: str | None = None, csrf: str | None = None, body=None,
         raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if csrf is not None:
        h["X-CSRF-Token"] = csrf
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def csrf_of(base: str, token: str) -> str:
    status, page = http("GET", f"{base}/r/{token}")
    assert status == 200, page
    m = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page)
    assert m, "rating page has no CSRF meta tag"
    return m.group(1)


def submission(assignment_id: int, choice: str = "left", left: int = 5, right: int = 3, comment: str = "") -> dict:
    return {"assignment_id": assignment_id, "choice": choice,
            "ratings": {"left": {c: left for c in CRITERIA}, "right": {c: right for c in CRITERIA}},
            "comment": comment, "duration_ms": 1200}
