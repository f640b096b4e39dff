"""Read user data files into :class:`~sumrl.data.schema.Example` records.

Formats: JSONL (``.jsonl``, also gzip-compressed ``.jsonl.gz``), JSON (a list of objects),
CSV, Parquet and Hugging Face ``save_to_disk`` folders. Any file format may carry an extra
``.gz`` suffix.

Every problem the user can fix becomes a one-line :class:`~sumrl.errors.DataError` naming the
file, the location and the field. The location is called "line" everywhere because DataError
prints it that way; what it counts depends on the format (docs/data.md):

- JSONL: the physical line number (1-based);
- JSON: the line on which the offending object starts;
- CSV: the row number with the header as row 1 (what a spreadsheet shows; equals the physical
  line unless a quoted cell spans lines), except non-UTF-8 bytes, which are located by physical line;
- Parquet / Hugging Face folders: the 0-based row index (as ``df.iloc[i]`` / ``ds[i]``).

A missing id becomes that location number (as a string), so an id always points back into the file.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sumrl.data.schema import Example
from sumrl.errors import DataError
from sumrl.utils.io import has_lone_surrogate, parse_json_text

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SPLIT_FIELD = "split"


@dataclass(frozen=True)
class FieldMap:
    """Which column/key holds each part of an example (CLI: ``--id-field`` etc.)."""

    id: str = "id"
    document: str = "document"
    summary: str = "summary"
    query: str = "query"


@dataclass
class LoadResult:
    examples: list[Example]
    n_skipped: int = 0
    problems: list[str] = field(default_factory=list)  # one DataError message per skipped row
    lines: dict[str, int] = field(default_factory=dict)  # example id -> its line (as DataError counts lines)


class _RowError(Exception):
    """A problem confined to one row: skippable with ``skip_invalid``."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.message, self.field_name = message, field_name


# --------------------------------------------------------------------------- file reading


def _format_of(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:], gz
    raise DataError(
        f"unknown file type '{''.join(path.suffixes) or path.name}'; supported: .jsonl, .jsonl.gz, .json, .csv, "
        ".parquet, or a Hugging Face save_to_disk folder",
        file=str(path),
    )


def _read_bytes(path: Path, gz: bool) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", file=str(path)) from None
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"not a valid gzip file ({e})", file=str(path)) from None
    if not data.strip():
        raise DataError("file is empty", file=str(path))
    return data


def _decode_whole(data: bytes, path: Path) -> str:
    """UTF-8 text (a leading BOM, as Excel writes, is dropped); bad bytes name their physical line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _utf8_error(data, e, path, base_line=1) from None


def _utf8_error(data: bytes, e: UnicodeDecodeError, path: Path, base_line: int) -> DataError:
    line = base_line + data.count(b"\n", 0, e.start)
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return DataError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); re-save the file as UTF-8",
                     file=str(path), line=line)


def _iter_jsonl(data: bytes, path: Path) -> Iterator[tuple[int, dict | _RowError]]:
    # Decoded line by line so that one bad byte costs one row under skip_invalid, not the file.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, _RowError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                    "re-save the file as UTF-8")
            continue
        try:
            obj = parse_json_text(text)
        except DataError as e:  # malformed, a 5,000-digit integer, 100k-deep nesting, a lone surrogate
            yield lineno, _RowError(e.reason)
            continue
        yield lineno, obj


def _iter_json(data: bytes, path: Path) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON list, each with the line its value starts on.

    Parsed element by element with raw_decode (instead of json.loads) to know where each one is.
    """
    text = _decode_whole(data, path)
    dec = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    def malformed(msg: str, i: int) -> DataError:
        return DataError(f"malformed JSON: {msg}", file=str(path), line=line_of(i))

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise malformed("a .json file must hold a list of objects (use .jsonl for one object per line)", i)
    i = skip(i + 1)
    if i < len(text) and text[i] == "]":
        if text[skip(i + 1):]:
            raise malformed("extra data after the list", skip(i + 1))
        raise DataError("file is empty (the list has no objects)", file=str(path))
    while True:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=str(path), line=e.lineno) from None
        except RecursionError:
            raise DataError("JSON nested too deeply", file=str(path), line=line_of(i)) from None
        except ValueError as e:  # an integer past the 4,300-digit conversion limit
            raise DataError(f"unreadable JSON value ({e})", file=str(path), line=line_of(i)) from None
        if has_lone_surrogate(obj):
            raise DataError("contains a lone surrogate escape (e.g. \\ud800), which is not valid Unicode",
                            file=str(path), line=line_of(i))
        yield line_of(i), obj
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < len(text) and text[i] == "]":
            if text[skip(i + 1):]:
                raise malformed("extra data after the list", skip(i + 1))
            return
        raise malformed("expected ',' or ']' after an object", i)


def _iter_csv(data: bytes, path: Path) -> Iterator[tuple[int, dict | _RowError]]:
    text = _decode_whole(data, path)
    # Long documents routinely exceed the csv module's default 128 KiB cell limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", file=str(path), line=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError("malformed CSV: the first row must be a header naming the columns", file=str(path), line=1)
    dup = sorted({h for h in header if h and header.count(h) > 1})
    if dup:
        raise DataError(f"malformed CSV: duplicate column name(s) {', '.join(dup)} in the header",
                        file=str(path), line=1)
    row_no = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # The reader cannot resynchronise after a quoting error, so this fails the file.
            raise DataError(f"malformed CSV: {e}", file=str(path), line=row_no + 1) from None
        row_no += 1
        if not cells or not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            yield row_no, _RowError(f"malformed CSV: the row has {len(cells)} cells but the header has {len(header)}")
            continue
        yield row_no, {h: c for h, c in zip(header, cells) if h}


def _iter_table(table: Any) -> Iterator[tuple[int, dict]]:
    for i, row in enumerate(table.to_pylist()):
        yield i, row


def _read_parquet(path: Path, gz: bool) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if gz:
            return pq.read_table(pa.BufferReader(_read_bytes(path, gz)))
        return pq.read_table(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", file=str(path)) from None


def _hf_split_alias(name: str, available: list[str]) -> str | None:
    from sumrl.data.splits import normalize_split

    want = normalize_split(name)
    for s in available:
        if normalize_split(s) == want:
            return s
    return None


def _read_hf(path: Path, split: str | None) -> tuple[list[tuple[int, dict, str | None]], bool]:
    """Rows of a save_to_disk folder as (row index, row, split name); True if it held splits."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("reading a Hugging Face folder needs the 'datasets' package", file=str(path)) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several unrelated types for a damaged folder
        raise DataError(f"not a readable Hugging Face save_to_disk folder ({type(e).__name__}: {e})",
                        file=str(path)) from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        if split is None:
            raise DataError(f"this DatasetDict folder holds splits {', '.join(names)}; choose one with --split",
                            file=str(path))
        chosen = names if split == "all" else [_hf_split_alias(split, names)]
        if chosen == [None]:
            raise DataError(f"split '{split}' not found; the folder holds {', '.join(names)}", file=str(path))
        rows = [(i, r, name) for name in chosen for i, r in enumerate(ds[name].to_list())]
        return rows, True
    return [(i, r, None) for i, r in enumerate(ds.to_list())], False


def _is_hf_folder(path: Path) -> bool:
    return any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


# --------------------------------------------------------------------------- row validation


def _parse_list_cell(text: str) -> Any:
    """A CSV cell that holds a list: Python literal (``['a', 'b']``) or JSON (``["a", "b"]``).

    ast.literal_eval only evaluates literals, never code; anything that does not parse as a
    list of strings stays the plain string it was (a summary may well start with '[').
    """
    s = text.strip()
    if not (s.startswith("[") and s.endswith("]")):
        return text
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return text


def _keys(row: dict) -> str:
    present = [str(k) for k, v in row.items() if not _missing(v)]
    return ", ".join(present[:12]) + (", ..." if len(present) > 12 else "") if present else "no fields"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_to_example(row: Any, loc: int, fields: FieldMap, *, require_summary: bool, csv_cells: bool) -> Example:
    if not isinstance(row, dict):
        raise _RowError(f"expected an object with fields, got {type(row).__name__}")

    # id: optional; a missing id becomes the location number (see the module docstring).
    raw_id = row.get(fields.id)
    if _missing(raw_id) or (csv_cells and raw_id.strip() == ""):
        ex_id = str(loc)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise _RowError(f"must be a string or an integer, got {type(raw_id).__name__}", fields.id)
    else:
        ex_id = str(raw_id).strip()
        if not ex_id:
            raise _RowError("empty id", fields.id)

    if fields.document not in row or _missing(row[fields.document]):
        raise _RowError(f"missing field (the row has: {_keys(row)}; map another name with --document-field)",
                        fields.document)
    doc = row[fields.document]
    if not isinstance(doc, str):
        raise _RowError(f"document must be a string, got {type(doc).__name__}", fields.document)
    if not doc.strip():
        raise _RowError("empty document", fields.document)

    raw_sum = row.get(fields.summary)
    if csv_cells and isinstance(raw_sum, str):
        # CSV cannot express null: an empty cell means "no summary".
        raw_sum = None if not raw_sum.strip() else _parse_list_cell(raw_sum)
    references: list[str]
    if _missing(raw_sum):
        if require_summary:
            raise _RowError(f"missing field (the row has: {_keys(row)}; map another name with --summary-field, "
                            "or allow documents without summaries)", fields.summary)
        references = []
    elif isinstance(raw_sum, str):
        if not raw_sum.strip():
            if require_summary:
                raise _RowError("empty summary", fields.summary)
            references = []
        else:
            references = [raw_sum]
    elif isinstance(raw_sum, (list, tuple)):
        bad = [type(v).__name__ for v in raw_sum if not isinstance(v, str)]
        if bad:
            raise _RowError(f"summary must be a string or a list of strings, got a list containing {bad[0]}",
                            fields.summary)
        references = [s for s in raw_sum if s.strip()]
        if len(references) < len(raw_sum):
            raise _RowError("summary list contains an empty string", fields.summary)
        if not references and require_summary:
            raise _RowError("empty summary list", fields.summary)
    else:
        raise _RowError(f"summary must be a string or a list of strings, got {type(raw_sum).__name__}",
                        fields.summary)

    raw_q = row.get(fields.query)
    if _missing(raw_q) or (isinstance(raw_q, str) and not raw_q.strip()):
        query = None
    elif isinstance(raw_q, str):
        query = raw_q
    else:
        raise _RowError(f"query must be a string, got {type(raw_q).__name__}", fields.query)

    used = {fields.id, fields.document, fields.summary, fields.query}
    meta = {k: v for k, v in row.items() if k not in used}
    split = meta.get(_SPLIT_FIELD)
    if _missing(split) or (isinstance(split, str) and not split.strip()):
        meta.pop(_SPLIT_FIELD, None)
    elif not isinstance(split, str):
        raise _RowError(f"split must be a string, got {type(split).__name__}", _SPLIT_FIELD)
    else:
        meta[_SPLIT_FIELD] = split.strip()
    return Example(id=ex_id, document=doc, references=references, query=query, meta=meta)


# --------------------------------------------------------------------------- entry point


def load_examples(path: str | Path, *, fields: FieldMap | None = None, skip_invalid: bool = False,
                  require_summary: bool = True, split: str | None = None) -> LoadResult:
    """Load every row of a data file (or Hugging Face folder) as Examples.

    ``split`` is only used for a Hugging Face DatasetDict folder (which must be told which split
    to read; ``"all"`` reads every split and records it in ``meta["split"]``); for files, choose
    splits with :func:`sumrl.data.load_data`.

    With ``skip_invalid`` a bad row is skipped and counted (its message kept in ``problems``);
    file-level problems (not found, empty, unknown type, malformed JSON list or CSV quoting)
    always raise. Duplicate ids are an error (the second occurrence is the bad row).
    """
    path = Path(path)
    fields = fields or FieldMap()
    if not path.exists():
        raise DataError("file not found", file=str(path))
    csv_cells = False
    held_splits = False
    if path.is_dir():
        if not _is_hf_folder(path):
            raise DataError("is a folder but not a Hugging Face save_to_disk folder (no dataset_info.json, "
                            "state.json or dataset_dict.json)", file=str(path))
        hf_rows, held_splits = _read_hf(path, split)
        if not hf_rows:
            raise DataError("file is empty (the dataset has no rows)", file=str(path))
        rows: Iterator[tuple[int, Any]] = ((i, r) for i, r, _ in hf_rows)
        row_splits = [s for _, _, s in hf_rows]
    else:
        fmt, gz = _format_of(path)
        row_splits = None
        if fmt == "parquet":
            table = _read_parquet(path, gz)
            if table.num_rows == 0:
                raise DataError("file is empty (no rows)", file=str(path))
            rows = _iter_table(table)
        else:
            data = _read_bytes(path, gz)
            if fmt == "jsonl":
                rows = _iter_jsonl(data, path)
            elif fmt == "json":
                rows = _iter_json(data, path)
            else:
                rows, csv_cells = _iter_csv(data, path), True

    examples: list[Example] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    n_rows = 0
    for k, (loc, row) in enumerate(rows):
        n_rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            ex = _row_to_example(row, loc, fields, require_summary=require_summary, csv_cells=csv_cells)
            if row_splits is not None and held_splits:
                ex.meta[_SPLIT_FIELD] = row_splits[k]
            if ex.id in seen:
                raise _RowError(f"duplicate id '{ex.id}' (first seen on line {seen[ex.id]})", fields.id)
        except _RowError as e:
            err = DataError(e.message, file=str(path), line=loc, field=e.field_name)
            if not skip_invalid:
                raise err from None
            problems.append(str(err))
            continue
        seen[ex.id] = loc
        examples.append(ex)
    if n_rows == 0:
        raise DataError("file is empty (no data rows)", file=str(path))
    if not examples:
        raise DataError(f"no valid rows ({len(problems)} skipped; first problem: {problems[0]})", file=str(path))
    return LoadResult(examples=examples, n_skipped=len(problems), problems=problems, lines=seen)


def load_heldout(spec: str, split: str, *, purpose: str = "held-out evaluation", **kwargs: Any) -> list[Example]:
    """Examples of a held-out split that a small user file may not have: ``[]`` with a one-line
    notice on stderr (the caller skips what needed them) instead of failing the whole run.

    A file of a handful of rows split 80/10/10 by id hash easily has no ``val`` row; training on
    it should still run. Any other data problem is still an error.
    """
    from sumrl.data.splits import EmptySplitError

    try:
        return load_data(spec, split, **kwargs)
    except EmptySplitError as e:
        from sumrl.utils.console import get_logger

        get_logger(__name__).warning(f"note: {e}; {purpose} is skipped")
        return []


def load_data(spec: str, split: str | None = "test", *, fields: FieldMap | None = None, skip_invalid: bool = False,
              require_summary: bool = True, limit: int | None = None, seed: int = 0) -> list[Example]:
    """The one entry point every command uses to get examples.

    ``spec`` is a built-in dataset name (:data:`sumrl.data.builtin.BUILTIN_DATASETS`; these names
    win over a file of the same name -- write ``./name`` for the file) or a path.
    ``split`` is train/val/test (``validation``/``dev`` accepted) or ``"all"``/None for everything.
    Files without their own splits are split by :mod:`sumrl.data.splits` (id hash with ``seed``).
    ``limit`` keeps the first N examples of the split, in file order. Skipped rows (with
    ``skip_invalid``) are reported through the ``sumrl.data`` logger.
    """
    examples, n_skipped, problems = load_data_report(spec, split, fields=fields, skip_invalid=skip_invalid,
                                                     require_summary=require_summary, limit=limit, seed=seed)
    if n_skipped:
        from sumrl.utils.console import get_logger

        get_logger(__name__).warning(f"{spec}: skipped {n_skipped} invalid row(s); first: {problems[0]}")
    return examples


def load_data_report(spec: str, split: str | None = "test", *, fields: FieldMap | None = None,
                     skip_invalid: bool = False, require_summary: bool = True, limit: int | None = None,
                     seed: int = 0) -> tuple[list[Example], int, list[str]]:
    """:func:`load_data` that also returns (n_skipped, problems) for callers that report them."""
    from sumrl.data.builtin import BUILTIN_DATASETS, is_builtin, load_builtin
    from sumrl.data.splits import select_split

    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    if is_builtin(spec):
        examples, n_skipped, problems = load_builtin(spec, split), 0, []  # built-ins always have references
    else:
        path = Path(spec)
        if not path.exists() and len(path.parts) == 1 and not path.suffix:
            # A bare word that is neither a file nor a built-in is most likely a misspelt built-in.
            raise DataError(f"unknown built-in dataset '{spec}' and no such file; known built-ins: "
                            f"{', '.join(BUILTIN_DATASETS)}")
        result = load_examples(path, fields=fields, skip_invalid=skip_invalid, require_summary=require_summary,
                               split=(split or "all") if path.is_dir() else None)
        examples = select_split(result.examples, split, seed, source=str(path))
        n_skipped, problems = result.n_skipped, result.problems
    return (examples[:limit] if limit is not None else examples), n_skipped, problems
