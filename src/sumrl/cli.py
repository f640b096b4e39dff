"""The ``sumrl`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; the parser it adds
sets ``func`` (called with the parsed namespace). User errors (:class:`SumrlError`) print a
single ``error: ...`` line and exit with status 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from sumrl import __version__
from sumrl.errors import SumrlError

# Order = order in `sumrl --help`. Modules are imported only to register their parsers;
# heavy imports (torch, transformers) happen inside the command functions.
COMMAND_MODULES = [
    "sumrl.data.cli",
    "sumrl.generation.cli",
    "sumrl.evaluation.cli",
    "sumrl.training.cli",
    "sumrl.rewards.cli",
    "sumrl.rl.cli",
    "sumrl.report.cli",
    "sumrl.human.cli",
    "sumrl.demo",
    "sumrl.recipes.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sumrl",
        description="Fine-tune language models with reinforcement learning to summarize long documents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sumrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # every command exists: a failing import is a bug, never a dropped command
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # set before any tokenizer exists (also when sumrl is imported and main() called, not only
    # under `python -m`): the Rust tokenizers' thread pool would otherwise warn after a fork
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sumrl.utils.console import get_logger, route_warnings

    log = get_logger("sumrl.cli")
    route_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    # peft (0.18) still asks transformers for the deprecated `is_gradient_checkpointing`: a
    # warning users cannot act on, printed once per model load
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    try:
        rv = args.func(args)
    except SumrlError as e:
        log.error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except OSError as e:
        # Output folders that are files or read-only, a full disk: the user's to fix, so one line
        # naming the path (every write is atomic, so nothing half-written is left behind).
        log.error(f"error: {describe_os_error(e)}")
        return 2
    return int(rv or 0)


def describe_os_error(e: OSError) -> str:
    import errno

    where = e.filename if e.filename is not None else "(unknown path)"
    why = {
        errno.EEXIST: "already exists and is not a folder (choose another path)",
        errno.ENOTDIR: "a part of this path is a file, not a folder (choose another path)",
        errno.EISDIR: "is a folder, expected a file",
        errno.EACCES: "permission denied (the folder is not writable?)",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device (free some space and rerun; finished outputs are intact, the "
                      "interrupted write was removed)",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOENT: "no such file or folder",
    }.get(e.errno, e.strerror or str(e))
    return f"{where}: {why}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
