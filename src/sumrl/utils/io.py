"""Atomic file and folder writes, JSON/JSONL helpers.

Nothing written is lost: every output is written to a temporary sibling and renamed into
place (``os.replace`` is atomic on POSIX), so a killed process leaves either the old or the
new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _name_path(e, path)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    )


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    Used for checkpoints: a run killed while saving leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent)))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_path(e, path)
        raise


def _name_path(e: BaseException, path: Path) -> None:
    """A full disk reports ENOSPC without a file name: attach the output being written, so the
    CLI's one-line error says which output could not be written."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = str(path)


# ---------------------------------------------------------------------------------------------
# Reading JSON written by users (or by a process that was killed): every failure is one DataError
# naming the file and line, never a traceback.

BOM = "\ufeff"


def has_lone_surrogate(obj: Any) -> bool:
    stack = [obj]
    while stack:  # iterative: the object may be deep (the parser's own limit still applies)
        o = stack.pop()
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


def parse_json_text(text: str | bytes, *, file: str | os.PathLike | None = None, line: int | None = None) -> Any:
    """``json.loads`` that turns every way a hostile or torn input can fail into one DataError.

    Besides malformed JSON: invalid UTF-8, integers past Python's 4,300-digit conversion limit
    (a ``ValueError``), nesting deep enough to exhaust the recursion limit (``RecursionError``),
    and ``\\ud800``-style lone surrogates, which parse but cannot be written back as UTF-8 (they
    would crash the command at write time, after all the work). A leading BOM is accepted.
    """
    from sumrl.errors import DataError

    where = dict(file=None if file is None else str(file), line=line)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not valid UTF-8 (byte 0x{text[e.start]:02x} at offset {e.start}); re-save the file "
                            "as UTF-8", **where) from None
    if text.startswith(BOM):
        text = text[1:]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=where["file"],
                        line=line if line is not None else e.lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", **where) from None
    except ValueError as e:  # int('9' * 5000): "Exceeds the limit (4300 digits) for integer string conversion"
        raise DataError(f"unreadable JSON value ({e})", **where) from None
    if "\\ud" in text.lower() and has_lone_surrogate(obj):
        raise DataError("contains a lone surrogate escape (e.g. \\ud800), which is not valid Unicode", **where)
    return obj


def _user_file_bytes(p: Path, kind: str) -> bytes:
    """The bytes of a user's file without a UTF-8 BOM (DataError naming the file for a folder, a
    missing or an unreadable file)."""
    from sumrl.errors import DataError

    if p.is_dir():
        raise DataError(f"is a folder, expected a {kind} file", file=str(p))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", file=str(p)) from None
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole JSON file (DataError on anything unreadable, including a folder or a missing file)."""
    p = Path(path)
    return parse_json_text(_user_file_bytes(p, "JSON"), file=p)


def iter_jsonl_file(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for each non-empty line of a JSONL file.

    ``tolerate_torn_tail``: a last line without its newline that does not parse is what a kill
    in the middle of an append leaves; it is dropped (with a one-line notice on stderr) instead
    of failing. Writers here always write whole lines, so only the last line can be torn.
    """
    p = Path(path)
    yield from iter_jsonl_bytes(_user_file_bytes(p, "JSONL"), file=p, tolerate_torn_tail=tolerate_torn_tail)


def iter_jsonl_bytes(data: bytes, *, file: str | os.PathLike, tolerate_torn_tail: bool = False
                     ) -> Iterator[tuple[int, Any]]:
    """The line reader behind :func:`iter_jsonl_file`, for JSONL that is not a plain file (the
    decompressed built-in datasets); ``file`` names it in errors."""
    from sumrl.errors import DataError

    p = Path(file)
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield i, parse_json_text(raw, file=p, line=i)
        except DataError:
            torn = i == len(lines)  # a non-empty last piece of the split: the file does not end with a newline
            if tolerate_torn_tail and torn:
                from sumrl.utils.console import get_logger

                get_logger(__name__).warning(f"note: {p}: line {i} is incomplete (an interrupted write); dropped it")
                return
            raise


def clean_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.*.tmp`` files/folders that a killed atomic write left in ``folder``.

    Only names in :func:`atomic_write_text` / :func:`atomic_dir`'s own pattern are touched, and
    only when no live process of ours is writing there (callers run this at resume, before any
    write starts). Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    continue
            removed.append(p)
    return removed
