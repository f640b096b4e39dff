"""Preference pairs: the ``pairs.jsonl`` reader (:func:`read_pairs`, fields in docs/architecture.md),
their document split, and the converters behind ``sumrl data pairs`` (human judgments -> pairs).

Rules (also in docs/rewards.md):

* ``summeval`` -- SummEval expert scores (100 CNN/DM documents x 16 systems). For every two
  summaries of the same document whose mean expert score on ``--dimension`` (``overall`` = mean
  of coherence, consistency, fluency, relevance) differs by at least ``--min-diff`` (default 0.5
  on the 1-5 scale), the higher one is ``chosen``; ``margin`` = the difference. The 11
  references go to ``meta.references``.
* ``frank`` -- FRANK factuality (CNN/DM and XSum): same-document pairs whose human factuality
  score (0-1) differs by at least ``--min-diff`` (default 0.25); margin = the difference;
  ``meta.references`` = the dataset's reference.
* ``news_pairwise`` -- Zhang et al. 2023: one pair per judgment between the freelance writer's
  and GPT-3's summary of a news article, by ``overall_writer_better`` (``--dimension
  informative`` uses ``informative_writer_better``); "Equally Good" is skipped; margin null.
  ``meta.references`` = the *other* writers' summaries of the article (never the two compared).
* ``squality`` -- SQuALITY human evaluation: for each reviewer, story and question, every two
  systems (bart, bart-dpr, human) the reviewer ranked differently on ``--dimension``
  (``overall``/``correctness``/``selection``) give a pair, lower rank = chosen; margin =
  rating difference / 100. Query = the question; references = the question's reference
  responses from ``test.jsonl`` minus the one shown as the "human" system (which would leak).
* ``human-export`` -- a ``pairs.jsonl`` written by ``sumrl human export`` (``--input FILE``):
  validated and given splits.

Every row gets ``meta.split`` by a seeded hash of its document id (:func:`sumrl.data.splits.hash_split`), so
no document is in two splits, and ids are prefixed with the source (``summeval:<doc>``).
"""

from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sumrl.config import opt
from sumrl.data.splits import hash_split
from sumrl.errors import ConfigError, DataError

SOURCES = ["summeval", "frank", "news_pairwise", "squality", "human-export"]
FOLDERS = {
    "summeval": "summeval_realsumm_ratings",
    "frank": "frank_cnndm_xsum_factuality",
    "news_pairwise": "news_llm_pairwise_zhang2023",
    "squality": "squality",
}
DEFAULT_MIN_DIFF = {"summeval": 0.5, "frank": 0.25}
DIMENSIONS = {
    "summeval": ["overall", "coherence", "consistency", "fluency", "relevance"],
    "frank": ["factuality"],
    "news_pairwise": ["overall", "informative"],
    "squality": ["overall", "correctness", "selection"],
    "human-export": ["overall"],
}


@dataclass
class PairsConfig:
    source: str = opt("", "where the judgments come from", choices=SOURCES)
    out: str = opt("", "output pairs.jsonl")
    shared_dir: str | None = opt(None, "folder holding the shared datasets (default: $SUMRL_SHARED_DATA, else "
                                       "../shared/data or shared/data from the current directory)")
    input: str | None = opt(None, "input file for --source human-export (a pairs.jsonl from `sumrl human export`)")
    dimension: str = opt("overall", "which human score decides the preference (summeval: overall, coherence, "
                                    "consistency, fluency, relevance; news_pairwise: overall, informative; squality: "
                                    "overall, correctness, selection; frank: factuality)")
    min_diff: float | None = opt(None, "smallest score difference that makes a pair (summeval default 0.5 on 1-5; "
                                       "frank default 0.25 on 0-1)")
    test_fraction: float = opt(0.2, "share of documents held out as test (seeded hash of the document id)")
    val_fraction: float = opt(0.0, "share of documents held out as val")
    seed: int = opt(0, "seed of the document split")

    def validate(self) -> None:
        if not self.source:
            raise ConfigError(f"missing --source (one of {', '.join(SOURCES)})")
        if not self.out:
            raise ConfigError("missing --out (the pairs.jsonl to write)")
        if self.source == "human-export" and not self.input:
            raise ConfigError("--source human-export needs --input FILE (written by `sumrl human export`)")
        if self.dimension not in DIMENSIONS[self.source]:
            if self.source == "frank" and self.dimension == "overall":
                self.dimension = "factuality"
            else:
                raise ConfigError(f"--dimension {self.dimension!r} does not exist for {self.source}; "
                                  f"choose from {', '.join(DIMENSIONS[self.source])}")
        if not (0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1 and self.test_fraction + self.val_fraction < 1):
            raise ConfigError("--test-fraction and --val-fraction must be in [0, 1) and sum to less than 1")


def shared_data_dir(explicit: str | None = None) -> Path:
    """The folder of the shared human-judgment datasets: ``--shared-dir``, else ``$SUMRL_SHARED_DATA``,
    else ``../shared/data`` or ``shared/data`` from the current directory. Never relative to where
    sumrl is installed: an installed wheel has no repository around it."""
    import os

    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise ConfigError(f"--shared-dir {p}: no such folder")
        return p
    env = os.environ.get("SUMRL_SHARED_DATA")
    if env:
        if not Path(env).expanduser().is_dir():
            raise ConfigError(f"$SUMRL_SHARED_DATA {env}: no such folder")
        return Path(env).expanduser().resolve()
    for c in (Path.cwd() / ".." / "shared" / "data", Path.cwd() / "shared" / "data"):
        if c.is_dir():
            return c.resolve()
    raise ConfigError("shared data folder not found (no $SUMRL_SHARED_DATA; looked in ../shared/data and "
                      "shared/data from the current directory); pass --shared-dir")


def read_shared_json(path: Path) -> Any:
    """A JSON file of the shared human-judgment data (DataError naming it when missing or bad)."""
    from sumrl.utils.io import read_json_file

    if not path.exists():
        raise DataError("file not found (see the folder's MANIFEST.md)", file=str(path))
    return read_json_file(path)


def iter_shared_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, row) of a JSONL file of the shared human-judgment data (DataError when missing or bad)."""
    from sumrl.utils.io import iter_jsonl_file

    if not path.exists():
        raise DataError("file not found (see the folder's MANIFEST.md)", file=str(path))
    yield from iter_jsonl_file(path)


def _norm(t: str) -> str:
    return " ".join(t.split())


def need_field(row: dict, key: str, file: Path, line: int | None) -> Any:
    """``row[key]``; a DataError naming file, line and field when it is missing."""
    if key not in row:
        raise DataError("missing", file=str(file), line=line, field=key)
    return row[key]


def literal_mapping(value: Any, file: Path, line: int | None, field: str) -> Any:
    """A mapping stored as JSON or as a Python-literal string (DataError naming the field otherwise)."""
    # some upstream files store dicts as Python-literal strings; parse safely, never eval
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise DataError("expected a mapping", file=str(file), line=line, field=field) from None
    return value


# --------------------------------------------------------------------------- the pairs.jsonl format


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a pairs.jsonl file (docs/architecture.md); errors name file, line, field."""
    from sumrl.data.formats import read_jsonl_objects

    p = Path(path)
    rows = []
    for ln, r in read_jsonl_objects(p, what="pairs"):
        for fld in ("document", "chosen", "rejected"):
            if not isinstance(r.get(fld), str):
                raise DataError("missing or not a string", file=str(p), line=ln, field=fld)
        if r.get("id") is None:
            raise DataError("missing (pairs are split by document id)", file=str(p), line=ln, field="id")
        m = r.get("margin")
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)):
            raise DataError(f"must be a number or null, got {m!r}", file=str(p), line=ln, field="margin")
        if r.get("query") is not None and not isinstance(r["query"], str):
            raise DataError("must be a string or null", file=str(p), line=ln, field="query")
        if r.get("meta") is not None and not isinstance(r["meta"], dict):
            raise DataError("must be an object", file=str(p), line=ln, field="meta")
        r["id"] = str(r["id"])
        r["_line"] = ln
        rows.append(r)
    if not rows:
        raise DataError("no pairs", file=str(p))
    return rows


def pair_split(row: dict[str, Any], seed: int = 0, test_fraction: float = 0.2) -> str:
    """``meta.split`` when the file has one (written by ``sumrl data pairs``), else the seeded
    document-id rule of :func:`sumrl.data.splits.hash_split` (no val split)."""
    s = (row.get("meta") or {}).get("split")
    return str(s) if s else hash_split(row["id"], seed, test_fraction, val_fraction=0.0)


# --------------------------------------------------------------------------- converters


def summeval_pairs(root: Path, dimension: str = "overall", min_diff: float = 0.5) -> list[dict]:
    path = root / FOLDERS["summeval"] / "summeval_100docs_16systems_expert_scores.json"
    data = read_shared_json(path)
    dims = ["coherence", "consistency", "fluency", "relevance"] if dimension == "overall" else [dimension]
    rows = []
    for doc_id, d in data.items():
        src = need_field(d, "src", path, None)
        refs = d.get("ref_summs") or [d.get("ref_summ")]
        systems = []
        for name, s in need_field(d, "sys_summs", path, None).items():
            sc = need_field(s, "scores", path, None)
            missing = [k for k in dims if k not in sc]
            if missing:
                raise DataError(f"system {name} of document {doc_id} lacks score {missing[0]}", file=str(path),
                                field=f"sys_summs.{name}.scores")
            systems.append((name, s["sys_summ"], sum(float(sc[k]) for k in dims) / len(dims)))
        for (na, ta, sa), (nb, tb, sb) in itertools.combinations(systems, 2):
            if abs(sa - sb) < min_diff or _norm(ta) == _norm(tb):
                continue
            (nc, tc, scc), (nr, tr, scr) = ((na, ta, sa), (nb, tb, sb)) if sa > sb else ((nb, tb, sb), (na, ta, sa))
            rows.append({"id": f"summeval:{doc_id}", "document": src, "query": None, "chosen": tc, "rejected": tr,
                         "margin": round(scc - scr, 6), "source": "summeval",
                         "meta": {"dimension": dimension, "systems": {"chosen": nc, "rejected": nr},
                                  "scores": {"chosen": scc, "rejected": scr}, "references": [r for r in refs if r]}})
    return rows


def frank_pairs(root: Path, min_diff: float = 0.25) -> list[dict]:
    path = root / FOLDERS["frank"] / "frank_docs_with_summaries.jsonl"
    rows = []
    for ln, r in iter_shared_jsonl(path):
        summaries = literal_mapping(need_field(r, "summaries", path, ln), path, ln, "summaries")
        fact = literal_mapping(need_field(r, "human_factuality", path, ln), path, ln, "human_factuality")
        systems = [(m, summaries[m], float(fact[m])) for m in fact if m in summaries]
        for (na, ta, sa), (nb, tb, sb) in itertools.combinations(systems, 2):
            if abs(sa - sb) < min_diff or _norm(ta) == _norm(tb):
                continue
            (nc, tc, scc), (nr, tr, scr) = ((na, ta, sa), (nb, tb, sb)) if sa > sb else ((nb, tb, sb), (na, ta, sa))
            rows.append({"id": f"frank:{need_field(r, 'id', path, ln)}", "document": need_field(r, "article", path, ln), "query": None,
                         "chosen": tc, "rejected": tr, "margin": round(scc - scr, 6), "source": "frank",
                         "meta": {"dimension": "factuality", "dataset": r.get("dataset"),
                                  "systems": {"chosen": nc, "rejected": nr},
                                  "scores": {"chosen": scc, "rejected": scr},
                                  "references": [r["reference"]] if r.get("reference") else []}})
    return rows


def news_pairwise_pairs(root: Path, dimension: str = "overall") -> list[dict]:
    folder = root / FOLDERS["news_pairwise"]
    path = folder / "pairwise_evaluation_results.json"
    data = read_shared_json(path)
    writers = read_shared_json(folder / "writer_summaries.json")
    by_article: dict[str, list[str]] = {}
    for w in writers:
        by_article.setdefault(str(w.get("article_id")), []).append(w.get("summary") or "")
    key = "overall_writer_better" if dimension == "overall" else "informative_writer_better"
    rows = []
    for k, r in enumerate(data):
        verdict = need_field(r, key, path, None)
        if isinstance(verdict, str) and verdict.lower() in ("true", "false"):
            verdict = verdict.lower() == "true"
        if verdict not in (True, False):  # "Equally Good": no preference
            continue
        writer, gpt = r["writer_summary"], r["text-davinci-002_summary"]
        if _norm(writer) == _norm(gpt):
            continue
        chosen, rejected = (writer, gpt) if verdict else (gpt, writer)
        refs = [s for s in by_article.get(str(r["article_id"]), []) if s and _norm(s) not in (_norm(writer), _norm(gpt))]
        rows.append({"id": f"news_pairwise:{r['article_id']}", "document": r["article_text"], "query": None,
                     "chosen": chosen, "rejected": rejected, "margin": None, "source": "news_pairwise",
                     "meta": {"dimension": dimension, "judgment": k, "evaluator": r.get("evaluator_id"),
                              "systems": {"chosen": "writer" if verdict else "text-davinci-002",
                                          "rejected": "text-davinci-002" if verdict else "writer"},
                              "references": refs}})
    return rows


def squality_pairs(root: Path, dimension: str = "overall") -> list[dict]:
    folder = root / FOLDERS["squality"]
    path = folder / "human_eval_all_responses.jsonl"
    stories: dict[str, dict] = {}
    for split in ("test", "dev", "train"):
        p = folder / f"{split}.jsonl"
        if p.exists():
            for _, s in iter_shared_jsonl(p):
                stories.setdefault(str(s["metadata"]["passage_id"]), s)
    rows = []
    for ln, r in iter_shared_jsonl(path):
        pid = str(need_field(r, "passage-id", path, ln))
        story = stories.get(pid)
        if story is None:
            raise DataError(f"story {pid} not found in SQuALITY's train/dev/test files", file=str(path), line=ln,
                            field="passage-id")
        for qk, q in need_field(r, "questions", path, ln).items():
            qi = int(qk)
            question = story["questions"][qi]
            human = q.get("human", {}).get("response", "")
            refs = [x["response_text"] for x in question["responses"] if _norm(x["response_text"]) != _norm(human)]
            by_reviewer: dict[str, dict[str, tuple[float, float]]] = {}
            for system, resp in q.items():
                for rv in resp.get("reviews", []):
                    by_reviewer.setdefault(str(rv["worker_id"]), {})[system] = (
                        float(rv[f"{dimension}-rank"]), float(rv[f"{dimension}-rating"]))
            for worker, ranks in sorted(by_reviewer.items()):
                for a, b in itertools.combinations(sorted(ranks), 2):
                    ra, rb = ranks[a][0], ranks[b][0]
                    if ra == rb or _norm(q[a]["response"]) == _norm(q[b]["response"]):
                        continue
                    c, rj = (a, b) if ra < rb else (b, a)
                    margin = max(0.0, ranks[c][1] - ranks[rj][1]) / 100.0
                    rows.append({"id": f"squality:{pid}", "document": story["document"],
                                 "query": question["question_text"], "chosen": q[c]["response"],
                                 "rejected": q[rj]["response"], "margin": round(margin, 6), "source": "squality",
                                 "meta": {"dimension": dimension, "reviewer": worker, "question": qi,
                                          "systems": {"chosen": c, "rejected": rj}, "references": refs}})
    return rows


def human_export_pairs(path: str | Path) -> list[dict]:
    rows = read_pairs(path)
    for r in rows:
        r.pop("_line", None)
        r.setdefault("source", "human")
        r.setdefault("query", None)
        r.setdefault("margin", None)
    return rows


def write_pairs(cfg: PairsConfig) -> tuple[int, str]:
    """``sumrl data pairs``: convert, refuse an empty result (one line), write ``cfg.out``
    atomically. Returns the number of pairs and "SPLIT N pairs / D documents, ..." per split."""
    from sumrl.utils.io import write_jsonl

    rows = convert(cfg)
    if not rows:
        raise DataError("no pairs produced (every candidate pair was a tie or below --min-diff)", field="min_diff")
    write_jsonl(cfg.out, rows)
    n_pairs: dict[str, int] = {}
    docs: dict[str, set] = {}
    for r in rows:
        split = r["meta"]["split"]
        n_pairs[split] = n_pairs.get(split, 0) + 1
        docs.setdefault(split, set()).add(r["id"])
    return len(rows), ", ".join(f"{k} {n_pairs[k]} pairs / {len(docs[k])} documents" for k in sorted(n_pairs))


def convert(cfg: PairsConfig) -> list[dict]:
    if cfg.source == "human-export":
        rows = human_export_pairs(cfg.input)
    else:
        root = shared_data_dir(cfg.shared_dir)
        md = cfg.min_diff if cfg.min_diff is not None else DEFAULT_MIN_DIFF.get(cfg.source, 0.0)
        if cfg.source == "summeval":
            rows = summeval_pairs(root, cfg.dimension, md)
        elif cfg.source == "frank":
            rows = frank_pairs(root, md)
        elif cfg.source == "news_pairwise":
            rows = news_pairwise_pairs(root, cfg.dimension)
        else:
            rows = squality_pairs(root, cfg.dimension)
    for r in rows:
        meta = r.get("meta") or {}
        meta["split"] = hash_split(r["id"], cfg.seed, cfg.test_fraction, cfg.val_fraction)
        r["meta"] = meta
    return rows
