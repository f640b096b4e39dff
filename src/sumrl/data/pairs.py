"""``sumrl data pairs``: human judgments -> preference pairs (``pairs.jsonl``, docs/architecture.md).

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

Every row gets ``meta.split`` by a seeded hash of its document id (:func:`document_split`), so
no document is in two splits, and ids are prefixed with the source (``summeval:<doc>``).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sumrl.config import add_dataclass_args, config_from_args, opt
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


def document_split(doc_id: str, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.0) -> str:
    """``test`` / ``val`` / ``train`` from ``sha256(f"{seed}:{doc_id}")`` read as a number in [0, 1).
    Depends only on the id and the seed: the same document is always in the same split."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class PairsConfig:
    source: str = opt("", "where the judgments come from", choices=SOURCES)
    out: str = opt("", "output pairs.jsonl")
    shared_dir: str | None = opt(None, "folder holding the shared datasets (default: ../shared/data relative to the "
                                       "repository, then to the current directory)")
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
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise ConfigError(f"--shared-dir {p}: no such folder")
        return p
    candidates = [Path(__file__).resolve().parents[3] / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise ConfigError("shared data folder not found (looked in ../shared/data next to the repository and the current "
                      "directory); pass --shared-dir")


def _load_json(path: Path) -> Any:
    from sumrl.utils.io import read_json_file

    if not path.exists():
        raise DataError("file not found (see the folder's MANIFEST.md)", file=str(path))
    return read_json_file(path)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    from sumrl.utils.io import iter_jsonl_file

    if not path.exists():
        raise DataError("file not found (see the folder's MANIFEST.md)", file=str(path))
    yield from iter_jsonl_file(path)


def _norm(t: str) -> str:
    return " ".join(t.split())


def _need(row: dict, key: str, file: Path, line: int | None) -> Any:
    if key not in row:
        raise DataError("missing", file=str(file), line=line, field=key)
    return row[key]


def _maybe_literal(value: Any, file: Path, line: int | None, field: str) -> Any:
    # some upstream files store dicts as Python-literal strings; parse safely, never eval
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise DataError("expected a mapping", file=str(file), line=line, field=field) from None
    return value


# --------------------------------------------------------------------------- converters


def summeval_pairs(root: Path, dimension: str = "overall", min_diff: float = 0.5) -> list[dict]:
    path = root / FOLDERS["summeval"] / "summeval_100docs_16systems_expert_scores.json"
    data = _load_json(path)
    dims = ["coherence", "consistency", "fluency", "relevance"] if dimension == "overall" else [dimension]
    rows = []
    for doc_id, d in data.items():
        src = _need(d, "src", path, None)
        refs = d.get("ref_summs") or [d.get("ref_summ")]
        systems = []
        for name, s in _need(d, "sys_summs", path, None).items():
            sc = _need(s, "scores", path, None)
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
    for ln, r in _iter_jsonl(path):
        summaries = _maybe_literal(_need(r, "summaries", path, ln), path, ln, "summaries")
        fact = _maybe_literal(_need(r, "human_factuality", path, ln), path, ln, "human_factuality")
        systems = [(m, summaries[m], float(fact[m])) for m in fact if m in summaries]
        for (na, ta, sa), (nb, tb, sb) in itertools.combinations(systems, 2):
            if abs(sa - sb) < min_diff or _norm(ta) == _norm(tb):
                continue
            (nc, tc, scc), (nr, tr, scr) = ((na, ta, sa), (nb, tb, sb)) if sa > sb else ((nb, tb, sb), (na, ta, sa))
            rows.append({"id": f"frank:{_need(r, 'id', path, ln)}", "document": _need(r, "article", path, ln), "query": None,
                         "chosen": tc, "rejected": tr, "margin": round(scc - scr, 6), "source": "frank",
                         "meta": {"dimension": "factuality", "dataset": r.get("dataset"),
                                  "systems": {"chosen": nc, "rejected": nr},
                                  "scores": {"chosen": scc, "rejected": scr},
                                  "references": [r["reference"]] if r.get("reference") else []}})
    return rows


def news_pairwise_pairs(root: Path, dimension: str = "overall") -> list[dict]:
    folder = root / FOLDERS["news_pairwise"]
    path = folder / "pairwise_evaluation_results.json"
    data = _load_json(path)
    writers = _load_json(folder / "writer_summaries.json")
    by_article: dict[str, list[str]] = {}
    for w in writers:
        by_article.setdefault(str(w.get("article_id")), []).append(w.get("summary") or "")
    key = "overall_writer_better" if dimension == "overall" else "informative_writer_better"
    rows = []
    for k, r in enumerate(data):
        verdict = _need(r, key, path, None)
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
            for _, s in _iter_jsonl(p):
                stories.setdefault(str(s["metadata"]["passage_id"]), s)
    rows = []
    for ln, r in _iter_jsonl(path):
        pid = str(_need(r, "passage-id", path, ln))
        story = stories.get(pid)
        if story is None:
            raise DataError(f"story {pid} not found in SQuALITY's train/dev/test files", file=str(path), line=ln,
                            field="passage-id")
        for qk, q in _need(r, "questions", path, ln).items():
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
                    (ra, ga), (rb, gb) = ranks[a], ranks[b]
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
    from sumrl.rewards.reward_model import read_pairs

    rows = read_pairs(path)
    for r in rows:
        r.pop("_line", None)
        r.setdefault("source", "human")
        r.setdefault("query", None)
        r.setdefault("margin", None)
    return rows


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
        meta["split"] = document_split(r["id"], cfg.seed, cfg.test_fraction, cfg.val_fraction)
        r["meta"] = meta
    return rows


def cmd_pairs(args: argparse.Namespace) -> int:
    from sumrl.utils.io import write_jsonl

    cfg = config_from_args(PairsConfig, args)
    rows = convert(cfg)
    if not rows:
        raise DataError("no pairs produced (every candidate pair was a tie or below --min-diff)", field="min_diff")
    write_jsonl(cfg.out, rows)
    counts: dict[str, list] = {}
    for r in rows:
        c = counts.setdefault(r["meta"]["split"], [0, set()])
        c[0] += 1
        c[1].add(r["id"])
    detail = ", ".join(f"{k} {v[0]} pairs / {len(v[1])} documents" for k, v in sorted(counts.items()))
    print(f"wrote {len(rows)} {cfg.source} pairs to {cfg.out} ({detail})")
    return 0


def register_pairs(sub: Any) -> None:
    """Hook called by ``sumrl.data.cli`` with the ``data`` sub-subparsers."""
    text = "convert human judgments (SummEval, FRANK, news pairwise, SQuALITY, sumrl human export) into preference pairs"
    p = sub.add_parser("pairs", help=text, description=text + ". Rules: docs/rewards.md.")
    add_dataclass_args(p, PairsConfig)
    p.set_defaults(func=cmd_pairs)
