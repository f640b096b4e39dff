"""SQLite storage of a human-evaluation study.

One file holds everything: the documents, the summaries (with their system names, which the
web app never sends to raters), the pairs to judge, the raters, their assignments and their
judgments. Design points:

* WAL journal: raters read while others write, and a writer never blocks readers.
* Every write is one ``BEGIN IMMEDIATE`` transaction, so two concurrent submissions are
  serialised by SQLite itself; ``UNIQUE(assignment_id)`` on judgments makes a duplicate
  submission impossible even if application code had a race.
* Only parameterised SQL (``?`` placeholders); no string-built queries with user data.
* Rater tokens are stored as SHA-256 hashes: the database alone does not give access links.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sumrl.errors import SumrlError

SCHEMA_VERSION = 1
CRITERIA = ("accuracy", "coverage", "coherence", "readability")

SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE documents (
    doc_key  INTEGER PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    document TEXT NOT NULL,
    query    TEXT
);
CREATE TABLE summaries (
    summary_id INTEGER PRIMARY KEY,
    doc_key    INTEGER NOT NULL REFERENCES documents(doc_key),
    system     TEXT NOT NULL,
    text       TEXT NOT NULL,
    run_dir    TEXT NOT NULL,
    UNIQUE (doc_key, system)
);
CREATE TABLE pairs (
    pair_id   INTEGER PRIMARY KEY,
    doc_key   INTEGER NOT NULL REFERENCES documents(doc_key),
    summary_a INTEGER NOT NULL REFERENCES summaries(summary_id),
    summary_b INTEGER NOT NULL REFERENCES summaries(summary_id),
    rank      INTEGER NOT NULL,          -- 0 = to be judged first (selection order)
    rm_prob   REAL,                      -- P(a preferred) under the reward model, if used
    UNIQUE (summary_a, summary_b),
    CHECK (summary_a <> summary_b)
);
CREATE TABLE raters (
    rater_id   INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE assignments (
    assignment_id INTEGER PRIMARY KEY,
    rater_id      INTEGER NOT NULL REFERENCES raters(rater_id),
    pair_id       INTEGER NOT NULL REFERENCES pairs(pair_id),
    position      INTEGER NOT NULL,      -- order in which this rater sees it
    left_is_a     INTEGER NOT NULL CHECK (left_is_a IN (0, 1)),
    UNIQUE (rater_id, pair_id),
    UNIQUE (rater_id, position)
);
CREATE TABLE judgments (
    judgment_id   INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(assignment_id),
    choice        TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
    comment       TEXT NOT NULL DEFAULT '',
    duration_ms   INTEGER,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE ratings (
    judgment_id INTEGER NOT NULL REFERENCES judgments(judgment_id),
    summary_id  INTEGER NOT NULL REFERENCES summaries(summary_id),
    criterion   TEXT NOT NULL CHECK (criterion IN ('accuracy', 'coverage', 'coherence', 'readability')),
    value       INTEGER NOT NULL CHECK (value BETWEEN 1 AND 7),
    PRIMARY KEY (judgment_id, summary_id, criterion)
);
CREATE INDEX assignments_by_rater ON assignments (rater_id, position);
"""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def connect(path: str | Path) -> sqlite3.Connection:
    """Open a connection in autocommit mode (transactions are explicit, see :func:`write`)."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    # Wait for a concurrent writer instead of failing with "database is locked".
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def open_study(path: str | Path) -> sqlite3.Connection:
    """Open an existing study, failing with a one-line error if ``path`` is not one."""
    p = Path(path)
    if not p.is_file():
        raise SumrlError(f"{p}: no such study database (create one with `sumrl human create`)")
    conn = connect(p)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        conn.close()
        raise SumrlError(f"{p}: not a sumrl human-evaluation study") from None
    if row is None or int(row["value"]) != SCHEMA_VERSION:
        conn.close()
        raise SumrlError(f"{p}: unsupported study schema version {row['value'] if row else None!r}")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    # WAL is a property of the file and persists; set it before any table exists.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise SumrlError(f"could not switch the study database to WAL mode (got {mode!r})")
    with write(conn):
        # Statement by statement: executescript() would COMMIT behind our transaction's back.
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction. IMMEDIATE takes the write lock up front, so the reads done inside
    (e.g. "is this assignment already judged?") cannot be invalidated by another writer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row["value"]
