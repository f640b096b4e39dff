#!/usr/bin/env python
"""Build the datasets shipped inside the package (src/sumrl/builtin_data/) from ../shared/data.

Run from the repository root:  python scripts/build_builtin_data.py [--shared ../shared/data] [--out DIR]

Deterministic: inputs are read in file order, every random choice uses a fixed seed, JSON is
written with sorted keys and gzip headers carry no timestamp or file name, so two runs give
byte-identical files (MANIFEST.json records their sha256). The split of ScisummNet is decided
here, once, and stored in the shipped rows, so it can never drift with library versions.

What is built (see docs/data.md for the why of each choice):
- scisummnet.jsonl.gz: one row per paper {id, split, title, document, abstract, human_summary,
  flat_ocr}. Papers whose document has fewer than MIN_DOC_WORDS whitespace words are dropped
  (near-empty extractions), as are papers whose text is unreadable OCR (fewer than
  MIN_ALPHA_FRACTION of the tokens are words). Val/test (100 each) are drawn with SCISUMMNET_SEED
  only from papers that have a non-empty abstract, so both reference views (abstract / human
  summary) evaluate on the same papers; all other papers are train. Then papers whose text is OCR
  garbage (sumrl.data.quality: more than 14.5% mangled tokens) are dropped -- after the split
  is drawn, so that every other paper keeps the split it had before this rule (the test and val
  splits may hold a few papers fewer than 100).
- scitldr.jsonl.gz: SciTLDR-A, one row per paper {id, split, title, document, summary: [TLDRs]},
  document = the abstract sentences joined by spaces; official train/dev/test (dev -> val).
- qmsum.jsonl.gz: one row per meeting {id, split, document, queries: [{query, answer, kind}]};
  the transcript is stored once per meeting and expanded into one example per query at load
  time. val and test are shipped fully; train is a seeded sample of QMSUM_TRAIN_MEETINGS meetings.
- LICENSE_* texts and MANIFEST.json (counts, seeds, sha256, source commits).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import hashlib
import io
import json
import random
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "src" / "sumrl" / "builtin_data"
sys.path.insert(0, str(ROOT / "src"))  # the OCR-garbage rule is sumrl's own (sumrl.data.quality)

from sumrl.data.quality import is_ocr_garbage, mangled_share  # noqa: E402

SCISUMMNET_SEED = 20250101
SCISUMMNET_EVAL_SIZE = 100  # per split (val and test)
MIN_DOC_WORDS = 100
MIN_ALPHA_FRACTION = 0.5
QMSUM_SEED = 20250101
QMSUM_TRAIN_MEETINGS = 40

SOURCES = {
    "scisummnet": {
        "repo": "github.com/WING-NUS/scisumm-corpus",
        "commit": "1dd68e44df5c94cc767cc301cd04e61c52e4bf68",
        "path": "data/Training-Set-2019/Task2/From-ScisummNet-2019/",
        "licence": "CC-BY-4.0",
    },
    "scitldr": {
        "repo": "github.com/allenai/scitldr",
        "commit": "5ccad9c00a60ad75c9e04abf7f27d0f53f983b20",
        "path": "SciTLDR-Data/SciTLDR-A/{train,dev,test}.jsonl",
        "licence": "Apache-2.0",
    },
    "qmsum": {
        "repo": "github.com/Yale-LILY/QMSum",
        "commit": "83d7768c1f2b4dfeb091385d3dc7e239b8e5bb7e",
        "path": "data/ALL/jsonl/{val,test}.jsonl, data/ALL/train/*.json",
        "licence": "MIT",
    },
}

# A "word" for the unreadable-OCR rule: letters (apostrophes/hyphens inside), optional trailing punctuation.
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[.,;:]?")


def alpha_fraction(text: str) -> float:
    toks = text.split()
    return sum(1 for t in toks if _WORD.fullmatch(t)) / max(1, len(toks))


def write_jsonl_gz(path: Path, rows: list[dict]) -> str:
    """Write rows as gzip JSONL with no timestamp in the header; return the sha256 of the bytes."""
    raw = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    data = buf.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    from sumrl.utils.io import iter_jsonl_bytes

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [r for _, r in iter_jsonl_bytes(data, file=path)]


def build_scisummnet(shared: Path) -> tuple[list[dict], dict]:
    rows = read_jsonl(shared / "scisummnet" / "scisummnet_2019.jsonl.gz")
    kept, dropped = [], []
    for r in rows:
        n_words = len(r["document"].split())
        if n_words < MIN_DOC_WORDS:
            dropped.append({"id": r["id"], "rule": f"fewer than {MIN_DOC_WORDS} words ({n_words})"})
        elif alpha_fraction(r["document"]) < MIN_ALPHA_FRACTION:
            dropped.append({"id": r["id"], "rule": f"unreadable OCR (word fraction {alpha_fraction(r['document']):.2f})"})
        else:
            kept.append(r)
    kept.sort(key=lambda r: r["id"])
    # Eval papers only from those with an abstract: the abstract view would otherwise lose them,
    # and the two reference views would be evaluated on different papers.
    eligible = [r["id"] for r in kept if r["abstract"].strip()]
    random.Random(SCISUMMNET_SEED).shuffle(eligible)
    test = set(eligible[:SCISUMMNET_EVAL_SIZE])
    val = set(eligible[SCISUMMNET_EVAL_SIZE:2 * SCISUMMNET_EVAL_SIZE])
    out = []
    for r in kept:
        split = "test" if r["id"] in test else "val" if r["id"] in val else "train"
        if is_ocr_garbage(r["document"]):
            dropped.append({"id": r["id"], "split_before": split,
                            "rule": f"OCR garbage ({mangled_share(r['document']):.3f} of the tokens mangled)"})
            continue
        out.append({
            "id": r["id"], "split": split, "title": r["title"], "document": r["document"],
            "abstract": r["abstract"], "human_summary": r["summary_scisummnet_human"],
            "flat_ocr": bool(r["flat_ocr_no_sections"]),
        })
    info = {
        "source_rows": len(rows), "dropped": dropped, "rows": len(out),
        "splits": {s: sum(1 for r in out if r["split"] == s) for s in ("train", "val", "test")},
        "empty_abstract_train_only": sum(1 for r in out if not r["abstract"].strip()),
        "seed": SCISUMMNET_SEED,
    }
    return out, info


def build_scitldr(shared: Path) -> tuple[list[dict], dict]:
    out = []
    for src_split, split in (("train", "train"), ("dev", "val"), ("test", "test")):
        for r in read_jsonl(shared / "scitldr" / f"SciTLDR-A_{src_split}.jsonl"):
            out.append({
                "id": r["paper_id"], "split": split, "title": r.get("title") or "",
                "document": " ".join(s.strip() for s in r["source"]),
                "summary": [t.strip() for t in r["target"] if t.strip()],
            })
    info = {"rows": len(out), "splits": {s: sum(1 for r in out if r["split"] == s) for s in ("train", "val", "test")},
            "references": sum(len(r["summary"]) for r in out)}
    return out, info


def render_transcript(turns: list[dict]) -> str:
    return "\n".join(f"{t['speaker'].strip()}: {t['content'].strip()}" for t in turns)


def build_qmsum(shared: Path) -> tuple[list[dict], dict]:
    out = []
    for split in ("train", "val", "test"):
        meetings = read_jsonl(shared / "qmsum" / f"{split}.jsonl")
        idx = list(range(len(meetings)))
        if split == "train":
            # A seeded sample keeps the length distribution representative while staying small.
            idx = sorted(random.Random(QMSUM_SEED).sample(idx, QMSUM_TRAIN_MEETINGS))
        for i in idx:
            m = meetings[i]
            queries = [{"query": q["query"].strip(), "answer": q["answer"].strip(), "kind": "general"}
                       for q in m["general_query_list"]]
            queries += [{"query": q["query"].strip(), "answer": q["answer"].strip(), "kind": "specific"}
                        for q in m["specific_query_list"]]
            out.append({"id": f"{split}-{i:03d}", "split": split,
                        "document": render_transcript(m["meeting_transcripts"]), "queries": queries})
    info = {"meetings": {s: sum(1 for r in out if r["split"] == s) for s in ("train", "val", "test")},
            "examples": {s: sum(len(r["queries"]) for r in out if r["split"] == s) for s in ("train", "val", "test")},
            "train_meetings_in_source": len(read_jsonl(shared / "qmsum" / "train.jsonl")),
            "train_seed": QMSUM_SEED}
    return out, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding scisummnet/, scitldr/, qmsum/")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"sources": SOURCES, "files": {}}
    for name, builder in (("scisummnet", build_scisummnet), ("scitldr", build_scitldr), ("qmsum", build_qmsum)):
        rows, info = builder(args.shared)
        fname = f"{name}.jsonl.gz"
        sha = write_jsonl_gz(args.out / fname, rows)
        manifest["files"][fname] = {"sha256": sha, **info}
        print(f"{fname}: {(args.out / fname).stat().st_size / 1e6:.2f} MB  {json.dumps({k: v for k, v in info.items() if k != 'dropped'})}")
    for src, dst in (("scisummnet/LICENCE_CC-BY-4.0", "LICENSE_scisummnet_CC-BY-4.0.txt"),
                     ("scitldr/LICENSE", "LICENSE_scitldr_Apache-2.0.txt"),
                     ("qmsum/LICENSE", "LICENSE_qmsum_MIT.txt")):
        shutil.copyfile(args.shared / src, args.out / dst)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
