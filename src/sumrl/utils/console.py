"""The one console logger of sumrl: every message sumrl prints -- the CLI's errors, notes and
warnings, the trainers' logs -- goes through the ``sumrl`` logger (``get_logger(__name__)``), whose
one handler writes INFO to stdout and WARNING and above to stderr, each as the bare message
(Python ``warnings`` are routed to it by the CLI: :func:`route_warnings`). Progress bars (tqdm)
are separate and unchanged. (Metric logs are :mod:`sumrl.utils.logging`.)"""

from __future__ import annotations

import logging
import sys


class _ConsoleHandler(logging.Handler):
    """INFO -> stdout, WARNING and above -> stderr; the streams are looked up at each message (so a
    redirected or captured stdout is honoured), flushed at once (messages interleave with tqdm)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            print(self.format(record), file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _install(logger: logging.Logger) -> None:
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        h = _ConsoleHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def get_logger(name: str = "sumrl") -> logging.Logger:
    """A logger under ``sumrl`` (pass ``__name__``); the console handler is installed once."""
    _install(logging.getLogger("sumrl"))
    return logging.getLogger(name if name == "sumrl" or name.startswith("sumrl.") else f"sumrl.{name}")


def route_warnings() -> None:
    """Python ``warnings`` through the same console handler (called by the CLI)."""
    logging.captureWarnings(True)
    _install(logging.getLogger("py.warnings"))
