"""Fault injection for the kill-and-resume tests (tests/test_kill_resume.py).

``SUMRL_KILL_AT=POINT:N`` makes the process kill itself with SIGKILL -- no cleanup, no
``finally``, exactly like ``kill -9`` or the OOM killer -- the N-th time it reaches ``POINT``.
Unset (always, outside those tests) a kill point costs one dictionary lookup. The points sit at
the moments where an interrupted write could do harm:

  checkpoint-mid-write    inside a checkpoint's temporary folder, half of its files written
  checkpoint-before-last  the checkpoint folder renamed into place, ``last`` not yet updated
  log-mid-line            half of a metrics/samples line appended (a torn last line)
  eval-after-block        a block of predictions appended to predictions.partial.jsonl
  publish-mid             some of the model files moved into the output folder, not all
"""

from __future__ import annotations

import os
import signal

_ENV = "SUMRL_KILL_AT"
_seen: dict[str, int] = {}


def armed(point: str) -> bool:
    """True when this call is the one that must die (counts the visit)."""
    spec = os.environ.get(_ENV)
    if not spec:
        return False
    name, _, n = spec.partition(":")
    if name != point:
        return False
    _seen[point] = _seen.get(point, 0) + 1
    return _seen[point] == int(n or 1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(point: str) -> None:
    if armed(point):
        die()
