"""Build a study: read `sumrl eval` run folders, form pairs, choose which to judge, assign raters.

Pairs are formed between systems on the same document id. Which pairs are judged (and in what
order) is decided by :func:`select_pairs`, a pure function: ``random`` shuffles with a seed;
``uncertain`` scores both summaries with a reward model and puts first the pairs whose
preference probability ``sigmoid(s_a - s_b)`` is closest to 0.5, i.e. where a human label
teaches the reward model the most (uncertainty sampling).
"""

from __future__ import annotations

import hmac
import itertools
import json
import math
import random
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from sumrl.config import opt, to_dict
from sumrl.errors import ConfigError, DataError, SumrlError
from sumrl.human import db
from sumrl.utils.seeds import PAIR_ORDER, SIDES, derive_seed

ScoreFn = Callable[[list[str], list[str], list["str | None"]], list[float]]


@dataclass
class HumanCreateConfig:
    """``sumrl human create``."""

    runs: list[str] = opt(default_factory=list, help="run folders written by `sumrl eval` (one system each, >= 2)")
    db: str = opt("", help="path of the new study database (SQLite); must not exist yet")
    pairs_per_doc: int = opt(0, help="judge at most K system pairs per document (0 = all pairs)")
    max_pairs: int = opt(0, help="judge at most this many pairs in total (0 = all)")
    raters: int = opt(1, help="number of raters; one access link is printed per rater")
    rater_names: list[str] = opt(default_factory=list, help="rater names (default: rater1 .. raterN)")
    raters_per_pair: int = opt(0, help="raters who judge each pair (0 = every rater judges every pair; "
                                       ">= 2 overlap is needed for agreement statistics)")
    select: str = opt("random", help="which pairs first: random, or where the reward model is least certain",
                      choices=["random", "uncertain"])
    rm: str | None = opt(None, help="reward model folder scoring the summaries for --select uncertain")
    seed: int = opt(0, help="seed of the pair order and the left/right randomisation")
    base_url: str = opt("http://127.0.0.1:8765", help="address raters reach `sumrl human serve` at (for the links)")

    def validate(self) -> None:
        if len(self.runs) < 2:
            raise ConfigError("--runs needs at least two run folders (pairs compare systems)")
        if not self.db:
            raise ConfigError("--db is required")
        if self.raters < 1:
            raise ConfigError("--raters must be >= 1")
        if self.rater_names and len(self.rater_names) != self.raters:
            raise ConfigError(f"--rater-names gives {len(self.rater_names)} names for --raters {self.raters}")
        if self.select == "uncertain" and not self.rm:
            raise ConfigError("--select uncertain needs --rm DIR (a reward model to measure uncertainty)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("--base-url must start with http:// or https://")


@dataclass
class Summary:
    system: str
    text: str
    run_dir: str


@dataclass
class Doc:
    id: str
    document: str
    query: str | None
    summaries: dict[str, Summary] = field(default_factory=dict)  # by system


@dataclass
class Candidate:
    """A pair of two systems' summaries of one document. ``system_a < system_b`` (stable order)."""

    doc_id: str
    system_a: str
    system_b: str
    rm_prob: float | None = None  # P(a preferred), when a reward model scored the pair


def load_runs(run_dirs: Sequence[str | Path]) -> dict[str, Doc]:
    """Read ``predictions.jsonl`` of each run folder; one system per run folder.

    The system name comes from ``metrics.json`` when present (it is the run's canonical name),
    else from the rows' ``system`` field. Two runs with the same system name, or the same
    document id with different text, are errors: the study would silently compare wrong things.
    """
    docs: dict[str, Doc] = {}
    seen_systems: dict[str, str] = {}
    for run in run_dirs:
        run = Path(run)
        pred_path = run / "predictions.jsonl"
        if not pred_path.is_file():
            raise DataError("no predictions.jsonl here (expected a run folder written by `sumrl eval`)", file=str(run))
        from sumrl.data.formats import read_predictions, read_run_metrics

        system_from_metrics = None
        metrics_path = run / "metrics.json"
        if metrics_path.is_file():
            system_from_metrics = read_run_metrics(metrics_path).get("system")
        # a run of `sumrl summarize` has no references; the document is shown to the raters
        lines = _line_numbers(pred_path)
        for row in read_predictions(pred_path, require_references=False, require_document=True):
            lineno = lines[str(row["id"])]
            system = system_from_metrics or row.get("system")
            if not isinstance(system, str) or not system:
                raise DataError("missing system name (and no metrics.json)", file=str(pred_path),
                                line=lineno, field="system")
            if seen_systems.setdefault(system, str(run)) != str(run):
                raise SumrlError(f"system '{system}' appears in two runs: {seen_systems[system]} and {run}")
            query = row.get("query")
            doc_id = str(row["id"])
            doc = docs.get(doc_id)
            if doc is None:
                doc = docs[doc_id] = Doc(doc_id, row["document"], query or None)
            elif doc.document != row["document"] or doc.query != (query or None):
                raise DataError(f"document id '{doc_id}' has a different text or query than in another run",
                                file=str(pred_path), line=lineno, field="document")
            if system in doc.summaries:
                raise DataError(f"document id '{doc_id}' appears twice for system '{system}'",
                                file=str(pred_path), line=lineno, field="id")
            doc.summaries[system] = Summary(system, row["prediction"], str(run))
    return docs


def _line_numbers(pred_path: Path) -> dict[str, int]:
    """Row id -> line of a predictions file the reader has accepted (for the study's own errors)."""
    from sumrl.data.formats import read_jsonl_objects

    return {str(r.get("id")): ln for ln, r in read_jsonl_objects(pred_path, what="predictions")}


def candidate_pairs(docs: dict[str, Doc]) -> list[Candidate]:
    """All pairs of systems per document. Identical summaries are skipped: there is nothing to
    judge, and a forced choice between identical texts would only add noise to the export."""
    out = []
    for doc_id in sorted(docs):
        doc = docs[doc_id]
        for sa, sb in itertools.combinations(sorted(doc.summaries), 2):
            if doc.summaries[sa].text.strip() != doc.summaries[sb].text.strip():
                out.append(Candidate(doc_id, sa, sb))
    return out


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def select_pairs(candidates: Sequence[Candidate], docs: dict[str, Doc], *, strategy: str = "random",
                 pairs_per_doc: int = 0, max_pairs: int = 0, score_fn: ScoreFn | None = None,
                 seed: int = 0) -> list[Candidate]:
    """Choose and order the pairs to judge (first = judged first).

    ``pairs_per_doc`` (0 = all) keeps at most K pairs per document, ``max_pairs`` (0 = all)
    caps the total. With ``uncertain`` both caps keep the most uncertain pairs; with ``random``
    a seeded random subset. ``score_fn(documents, summaries, queries) -> scores`` is called once
    with every distinct summary that appears in a candidate.
    """
    if strategy not in ("random", "uncertain"):
        raise SumrlError(f"unknown selection strategy '{strategy}' (random, uncertain)")
    if pairs_per_doc < 0 or max_pairs < 0:
        raise SumrlError("pairs_per_doc and max_pairs must be >= 0")
    rng = random.Random(derive_seed(seed, PAIR_ORDER))
    cands = [Candidate(c.doc_id, c.system_a, c.system_b) for c in candidates]
    if strategy == "uncertain":
        if score_fn is None:
            raise SumrlError("--select uncertain needs a reward model (--rm DIR)")
        keys = sorted({(c.doc_id, s) for c in cands for s in (c.system_a, c.system_b)})
        documents = [docs[d].document for d, _ in keys]
        summaries = [docs[d].summaries[s].text for d, s in keys]
        queries = [docs[d].query for d, _ in keys]
        scores = list(score_fn(documents, summaries, queries))
        if len(scores) != len(keys):
            raise SumrlError(f"reward model returned {len(scores)} scores for {len(keys)} summaries")
        score = {k: float(v) for k, v in zip(keys, scores)}
        for c in cands:
            c.rm_prob = _sigmoid(score[(c.doc_id, c.system_a)] - score[(c.doc_id, c.system_b)])
        # Random tie-break first, then a stable sort by uncertainty: equal-uncertainty pairs
        # come in random rather than alphabetical order.
        rng.shuffle(cands)
        cands.sort(key=lambda c: abs(c.rm_prob - 0.5))  # type: ignore[operator]
    else:
        rng.shuffle(cands)
    if pairs_per_doc:
        per_doc: dict[str, int] = {}
        kept = []
        for c in cands:
            if per_doc.get(c.doc_id, 0) < pairs_per_doc:
                per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
                kept.append(c)
        cands = kept
    if max_pairs:
        cands = cands[:max_pairs]
    return cands


def assign(n_pairs: int, n_raters: int, raters_per_pair: int) -> list[list[int]]:
    """Which pair indices each rater judges (in selection order).

    Each pair goes to ``raters_per_pair`` raters (0 = all raters), spreading the load round-robin
    so raters get equal shares (+-1). Overlap between raters is what makes agreement measurable.
    """
    r = n_raters if raters_per_pair in (0, None) else raters_per_pair
    if not 1 <= r <= n_raters:
        raise SumrlError(f"raters_per_pair must be between 1 and the number of raters ({n_raters}), got {r}")
    out: list[list[int]] = [[] for _ in range(n_raters)]
    nxt = 0
    for p in range(n_pairs):
        for k in range(r):
            out[(nxt + k) % n_raters].append(p)
        nxt = (nxt + r) % n_raters
    return out


@dataclass
class CreatedStudy:
    links: dict[str, str]  # rater name -> access link (the only place the token is ever shown)
    n_pairs: int
    n_assignments: int
    n_documents: int = 0  # documents read from the runs (set by create_from_runs)
    n_candidates: int = 0  # system pairs that could have been judged (set by create_from_runs)


def create_study(db_path: str | Path, docs: dict[str, Doc], selected: Sequence[Candidate], *,
                 raters: Sequence[str], raters_per_pair: int = 0, base_url: str = "http://127.0.0.1:8765",
                 seed: int = 0, info: dict | None = None) -> CreatedStudy:
    """Write a new study database. Refuses to overwrite an existing file (it may hold judgments)."""
    db_path = Path(db_path)
    if db_path.exists():
        raise SumrlError(f"{db_path} already exists; it may hold judgments, so choose a new path")
    if not selected:
        raise SumrlError("no pairs to judge: need >= 2 runs with different summaries of the same document ids")
    if not raters or len(set(raters)) != len(raters):
        raise SumrlError("need at least one rater, with distinct names")
    rng = random.Random(derive_seed(seed, SIDES))
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = db.connect(db_path)
    try:
        db.create_schema(conn)
        with db.write(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('secret', ?)", (secrets.token_hex(32),))
            conn.execute("INSERT INTO meta (key, value) VALUES ('info', ?)", (json.dumps(info or {}),))
            doc_keys: dict[str, int] = {}
            summary_ids: dict[tuple[str, str], int] = {}
            used_docs = sorted({c.doc_id for c in selected})
            for doc_id in used_docs:
                d = docs[doc_id]
                doc_keys[doc_id] = conn.execute("INSERT INTO documents (id, document, query) VALUES (?, ?, ?)",
                                                (d.id, d.document, d.query)).lastrowid
                for system, s in sorted(d.summaries.items()):
                    summary_ids[(doc_id, system)] = conn.execute(
                        "INSERT INTO summaries (doc_key, system, text, run_dir) VALUES (?, ?, ?, ?)",
                        (doc_keys[doc_id], system, s.text, s.run_dir)).lastrowid
            pair_ids = []
            for rank, c in enumerate(selected):
                pair_ids.append(conn.execute(
                    "INSERT INTO pairs (doc_key, summary_a, summary_b, rank, rm_prob) VALUES (?, ?, ?, ?, ?)",
                    (doc_keys[c.doc_id], summary_ids[(c.doc_id, c.system_a)], summary_ids[(c.doc_id, c.system_b)],
                     rank, c.rm_prob)).lastrowid)
            links = {}
            n_assign = 0
            for name, pair_idx in zip(raters, assign(len(pair_ids), len(raters), raters_per_pair)):
                token = secrets.token_urlsafe(32)  # 256 bits: unguessable
                rater_id = conn.execute("INSERT INTO raters (name, token_hash) VALUES (?, ?)",
                                        (name, db.hash_token(token))).lastrowid
                # Left/right is randomised so a rater cannot learn "system X is always on the
                # left", and balanced per rater (half each way, shuffled) so position bias
                # cancels out instead of depending on luck.
                sides = [k % 2 for k in range(len(pair_idx))]
                rng.shuffle(sides)
                for pos, (p, left_is_a) in enumerate(zip(pair_idx, sides)):
                    conn.execute("INSERT INTO assignments (rater_id, pair_id, position, left_is_a) "
                                 "VALUES (?, ?, ?, ?)", (rater_id, pair_ids[p], pos, left_is_a))
                    n_assign += 1
                links[name] = f"{base_url.rstrip('/')}/r/{token}"
    except BaseException:
        conn.close()
        # A half-written study is useless and would block the next `create` with the same path.
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
        raise
    conn.close()
    return CreatedStudy(links=links, n_pairs=len(pair_ids), n_assignments=n_assign)


def load_rm_score_fn(path: str) -> ScoreFn:
    """A saved reward model's ``score(documents, summaries, queries)`` (torch is imported only here)."""
    from sumrl.rewards.reward_model import load_reward_model

    return load_reward_model(path).score


def create_from_runs(cfg: HumanCreateConfig) -> CreatedStudy:
    """``sumrl human create``: read the runs, form and select pairs (``--select uncertain`` scores
    them with ``cfg.rm``), write the study database. The links are only in the returned value."""
    docs = load_runs(cfg.runs)
    cands = candidate_pairs(docs)
    score_fn = load_rm_score_fn(cfg.rm) if cfg.select == "uncertain" else None
    selected = select_pairs(cands, docs, strategy=cfg.select, pairs_per_doc=cfg.pairs_per_doc,
                            max_pairs=cfg.max_pairs, score_fn=score_fn, seed=cfg.seed)
    names = cfg.rater_names or [f"rater{i + 1}" for i in range(cfg.raters)]
    study = create_study(cfg.db, docs, selected, raters=names, raters_per_pair=cfg.raters_per_pair,
                         base_url=cfg.base_url, seed=cfg.seed, info={"config": to_dict(cfg)})
    study.n_documents, study.n_candidates = len(docs), len(cands)
    return study


def rater_for_token(conn: sqlite3.Connection, token: str) -> sqlite3.Row | None:
    if not token or len(token) > 200:
        return None
    return conn.execute("SELECT rater_id, name FROM raters WHERE token_hash = ?",
                        (db.hash_token(token),)).fetchone()


def csrf_token(secret: str, rater_id: int) -> str:
    """Per-rater CSRF token, derived (HMAC) from the study's secret: nothing to store, and one
    rater's token is worthless for another."""
    return hmac.new(secret.encode(), f"csrf:{rater_id}".encode(), "sha256").hexdigest()
