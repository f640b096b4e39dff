"""Datasets shipped inside the package (``src/sumrl/builtin_data/``), usable without ../shared.

The files are built by ``scripts/build_builtin_data.py`` (deterministic; see that script and
docs/data.md for the selection rules) and licensed by their authors as listed in
``builtin_data/ATTRIBUTION.md``. Splits are stored in the files, so they never change.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from sumrl.data.schema import Example
from sumrl.data.splits import SPLITS, normalize_split
from sumrl.errors import DataError


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    licence: str
    source: str
    file: str             # file name under builtin_data/
    licence_file: str     # licence text under builtin_data/
    reference: str = ""   # which reference the view uses (ScisummNet has two)


_SCISUMMNET_SRC = "github.com/WING-NUS/scisumm-corpus @ 1dd68e44df5c94cc767cc301cd04e61c52e4bf68"
_SCISUMMNET_DESC = ("972 ACL papers (ScisummNet 2019; long: median ~3,900 words), seeded split 772/100/100. "
                    "{ref}")

BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "scisummnet",
            _SCISUMMNET_DESC.format(ref="Reference = the paper's abstract (21 train papers without one are left "
                                        "out of this view)."),
            "CC BY 4.0", _SCISUMMNET_SRC, "scisummnet.jsonl.gz", "LICENSE_scisummnet_CC-BY-4.0.txt", "abstract"),
        BuiltinDataset(
            "scisummnet:human",
            _SCISUMMNET_DESC.format(ref="Reference = the ScisummNet human summary (title + abstract + "
                                        "citation-informed sentences, so it overlaps the abstract)."),
            "CC BY 4.0", _SCISUMMNET_SRC, "scisummnet.jsonl.gz", "LICENSE_scisummnet_CC-BY-4.0.txt", "human"),
        BuiltinDataset(
            "scitldr",
            "SciTLDR-A: 3,229 paper abstracts (short, ~156 words) -> one-sentence TLDRs; official splits "
            "1992/619/618, multi-reference on val/test.",
            "Apache-2.0", "github.com/allenai/scitldr @ 5ccad9c00a60ad75c9e04abf7f27d0f53f983b20",
            "scitldr.jsonl.gz", "LICENSE_scitldr_Apache-2.0.txt"),
        BuiltinDataset(
            "qmsum",
            "QMSum slice: long meeting transcripts (median ~8,000 words) with query-focused summaries; "
            "official val/test in full (35 meetings each), 40 of 162 train meetings; one example per query "
            "(319/272/281).",
            "MIT", "github.com/Yale-LILY/QMSum @ 83d7768c1f2b4dfeb091385d3dc7e239b8e5bb7e",
            "qmsum.jsonl.gz", "LICENSE_qmsum_MIT.txt"),
    )
}


def is_builtin(spec: str) -> bool:
    """True if ``spec`` names a built-in dataset (these names win over files of the same name)."""
    return spec in BUILTIN_DATASETS


def builtin_data_dir() -> Any:
    """The folder holding the shipped files (a Traversable; a real path for normal installs)."""
    return resources.files("sumrl").joinpath("builtin_data")


@lru_cache(maxsize=None)
def _rows(file: str) -> tuple[dict, ...]:
    # Parsed once per process (ScisummNet is ~9 MB compressed); callers get fresh Examples.
    from sumrl.utils.io import iter_jsonl_bytes

    with builtin_data_dir().joinpath(file).open("rb") as raw, gzip.open(raw, "rb") as f:
        return tuple(row for _, row in iter_jsonl_bytes(f.read(), file=f"builtin_data/{file}"))


def _examples(ds: BuiltinDataset, row: dict) -> list[Example]:
    split = row["split"]
    if ds.file == "scisummnet.jsonl.gz":
        ref = row["abstract"] if ds.reference == "abstract" else row["human_summary"]
        if not ref.strip():
            return []
        meta = {"split": split, "title": row["title"], "flat_ocr": row["flat_ocr"], "dataset": ds.name}
        return [Example(id=row["id"], document=row["document"], references=[ref], meta=meta)]
    if ds.file == "scitldr.jsonl.gz":
        meta = {"split": split, "title": row["title"], "dataset": ds.name}
        return [Example(id=row["id"], document=row["document"], references=list(row["summary"]), meta=meta)]
    # qmsum: one meeting row -> one example per query; the transcript string is shared, not copied.
    return [
        Example(id=f"{row['id']}-{qi}", document=row["document"], references=[q["answer"]], query=q["query"],
                meta={"split": split, "meeting": row["id"], "query_kind": q["kind"], "dataset": ds.name})
        for qi, q in enumerate(row["queries"])
    ]


def load_builtin(name: str, split: str | None = "test") -> list[Example]:
    """Examples of a built-in dataset; ``split`` is train/val/test (aliases validation/dev) or all/None."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset '{name}'; known: {', '.join(BUILTIN_DATASETS)} "
                        "(or give a path to a data file)")
    ds = BUILTIN_DATASETS[name]
    want = None if split is None or normalize_split(split) == "all" else normalize_split(split)
    if want is not None and want not in SPLITS:
        raise DataError(f"built-in dataset '{name}' has no split '{split}'; choose train, val, test or all")
    out: list[Example] = []
    for row in _rows(ds.file):
        if want is None or row["split"] == want:
            out.extend(_examples(ds, row))
    return out
