"""Convert Cohan et al. (2018) arXiv/PubMed files (one JSON object per line: article_id,
article_text [sentences], abstract_text ["<S> sentence </S>", ...]) into sumrl's JSONL
(id, document, summary), for evaluation only:

    .venv/bin/python scripts/cohan_to_jsonl.py ../shared/data/pubmed_cohan_sample/*.txt --out runs/pubmed.jsonl

The PubMed sample in ../shared states no licence: it is used here, never shipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_TAG = re.compile(r"</?S>")


def convert(row: dict) -> dict:
    abstract = " ".join(_TAG.sub("", s).strip() for s in row["abstract_text"])
    return {"id": row["article_id"], "document": " ".join(s.strip() for s in row["article_text"]),
            "summary": re.sub(r"\s+", " ", abstract).strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="Cohan-format files (one JSON object per line)")
    ap.add_argument("--out", required=True, type=Path, help="sumrl JSONL to write (atomically)")
    args = ap.parse_args(argv)

    from sumrl.errors import DataError, SumrlError
    from sumrl.utils.io import atomic_write_text, iter_jsonl_file

    rows, seen, skipped = [], set(), 0
    try:
        for f in args.files:
            for line, row in iter_jsonl_file(f):
                for field in ("article_id", "article_text", "abstract_text"):
                    if not isinstance(row, dict) or field not in row:
                        raise DataError("missing field", file=str(f), line=line, field=field)
                r = convert(row)
                if r["id"] in seen or not r["document"] or not r["summary"]:
                    skipped += 1  # a duplicate, or an article whose text or abstract is empty
                    continue
                seen.add(r["id"])
                rows.append(r)
    except SumrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} articles -> {args.out} ({skipped} skipped: duplicate or empty)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
