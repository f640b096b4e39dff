"""Attacks on the rating app (issue #19), one table, against a real waitress server on loopback.

Every attack must be refused with a 4xx (never a 5xx), API answers must be JSON (never an HTML
error page), nothing may be written to the study, and the strict security headers must be on
every answer, errors included. docs/reliability.md quotes the count (``len(ATTACKS)``). The
concurrency attack is the last test: 20 simultaneous submissions of one judgment.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
from urllib.parse import urlsplit

import pytest

from sumrl.human.app import MAX_BODY_BYTES
from test_human_support import csrf_of, make_study, running_server, submission

SQLI = "' OR '1'='1' --"


def _attacks():
    """(name, method, path, headers-kind, body) -- headers-kind says which credentials go along:
    'none', 'token' (rater1's bearer), 'full' (bearer + CSRF + JSON), 'other' (rater2's CSRF)."""
    big = 2**70
    deep = b'{"assignment_id": 1, "choice": "left", "ratings": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        # authentication
        ("no-token", "GET", "/api/next", "none", None),
        ("unknown-token", "GET", "/api/next", "bearer:" + "x" * 43, None),
        ("sql-injection-token", "GET", "/api/next", "bearer:" + SQLI, None),
        ("empty-bearer", "GET", "/api/next", "bearer:", None),
        ("basic-auth-instead", "GET", "/api/next", "raw-auth:Basic YWRtaW46YWRtaW4=", None),
        ("page-unknown-token", "GET", "/r/" + "x" * 43, "none", None),
        ("page-sql-injection-token", "GET", "/r/%27%20OR%201%3D1%20--", "none", None),
        ("submit-no-token", "POST", "/api/submit", "csrf-only", "valid"),
        # CSRF / cross-origin
        ("submit-no-csrf", "POST", "/api/submit", "token", "valid"),
        ("submit-forged-csrf", "POST", "/api/submit", "forged-csrf", "valid"),
        ("submit-other-raters-csrf", "POST", "/api/submit", "other", "valid"),
        ("submit-evil-origin", "POST", "/api/submit", "origin:http://evil.example", "valid"),
        ("submit-null-origin", "POST", "/api/submit", "origin:null", "valid"),
        ("submit-forged-host-and-origin", "POST", "/api/submit", "host-origin:evil.example", "valid"),
        ("submit-form-content-type", "POST", "/api/submit", "ctype:application/x-www-form-urlencoded", "valid"),
        ("submit-text-plain", "POST", "/api/submit", "ctype:text/plain", "valid"),
        # access to other raters' data
        ("read-other-raters-assignment", "GET", "/api/assignment/{other}", "token", None),
        ("submit-other-raters-assignment", "POST", "/api/submit", "full", "other-assignment"),
        # ids: injection, range, type
        ("id-sql-injection", "GET", "/api/assignment/1%20OR%201=1", "token", None),
        ("id-union-select", "GET", "/api/assignment/1%3B%20DROP%20TABLE%20judgments", "token", None),
        ("id-negative", "GET", "/api/assignment/-1", "token", None),
        ("id-zero", "GET", "/api/assignment/0", "token", None),
        ("id-huge-path", "GET", "/api/assignment/99999999999999999999999", "token", None),
        ("id-2**63-path", "GET", f"/api/assignment/{2**63}", "token", None),
        ("id-float-path", "GET", "/api/assignment/1.5", "token", None),
        ("submit-id-2**70", "POST", "/api/submit", "full", {"assignment_id": big}),
        ("submit-id-negative", "POST", "/api/submit", "full", {"assignment_id": -5}),
        ("submit-id-string-sqli", "POST", "/api/submit", "full", {"assignment_id": SQLI}),
        ("submit-id-float", "POST", "/api/submit", "full", {"assignment_id": 1.0}),
        ("submit-id-bool", "POST", "/api/submit", "full", {"assignment_id": True}),
        ("submit-id-null", "POST", "/api/submit", "full", {"assignment_id": None}),
        # bodies
        ("body-not-json", "POST", "/api/submit", "full", b"{not json"),
        ("body-json-list", "POST", "/api/submit", "full", b"[1, 2, 3]"),
        ("body-json-string", "POST", "/api/submit", "full", b'"hello"'),
        ("body-empty", "POST", "/api/submit", "full", b""),
        ("body-deep-nesting", "POST", "/api/submit", "full", deep),
        ("body-huge-int", "POST", "/api/submit", "full", b'{"assignment_id": ' + b"9" * 5000 + b"}"),
        ("body-lone-surrogate-comment", "POST", "/api/submit", "full", {"comment": "x\ud800y"}),
        ("body-nan-rating", "POST", "/api/submit", "full", b"NAN"),
        ("body-oversized", "POST", "/api/submit", "full", b'{"comment": "' + b"x" * (MAX_BODY_BYTES + 100) + b'"}'),
        ("body-invalid-utf8", "POST", "/api/submit", "full", b'{"comment": "\xff\xfe"}'),
        ("body-extra-field", "POST", "/api/submit", "full", {"is_admin": True}),
        ("body-choice-xss", "POST", "/api/submit", "full", {"choice": "<script>alert(1)</script>"}),
        ("body-rating-out-of-range", "POST", "/api/submit", "full", {"ratings": {"left": {"accuracy": 99}}}),
        ("body-comment-too-long", "POST", "/api/submit", "full", {"comment": "x" * 5000}),
        # traversal and methods
        ("static-traversal", "GET", "/static/../../../../etc/passwd", "none", None),
        ("static-encoded-traversal", "GET", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "none", None),
        ("static-double-encoded", "GET", "/static/%252e%252e/%252e%252e/etc/passwd", "none", None),
        ("template-traversal", "GET", "/static/../templates/rate.html", "none", None),
        ("db-file", "GET", "/study.sqlite", "none", None),
        ("put-submit", "PUT", "/api/submit", "full", "valid"),
        ("delete-assignment", "DELETE", "/api/assignment/{mine}", "token", None),
        ("get-submit", "GET", "/api/submit", "token", None),
        ("trace-method", "TRACE", "/api/next", "token", None),
        ("huge-header", "GET", "/api/next", "bigheader", None),
    ]


ATTACKS = _attacks()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    db_path, tokens = make_study(tmp, raters=2)
    with running_server(db_path) as base:
        yield db_path, tokens, base


def _judgments(db_path) -> int:
    with sqlite3.connect(db_path) as c:
        return c.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]


def _request(base: str, method: str, path: str, headers: dict, body: bytes | None):
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        # skip_host: some attacks bring their own Host header
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused(attack, app_server):
    name, method, path, kind, body = attack
    db_path, tokens, base = app_server
    t1, t2 = tokens["rater1"], tokens["rater2"]
    csrf1, csrf2 = csrf_of(base, t1), csrf_of(base, t2)
    _, _, raw1 = _request(base, "GET", "/api/next", {"Authorization": f"Bearer {t1}"}, None)
    _, _, raw2 = _request(base, "GET", "/api/next", {"Authorization": f"Bearer {t2}"}, None)
    mine = json.loads(raw1)["assignment"]["id"]
    other = json.loads(raw2)["assignment"]["id"]
    path = path.format(mine=mine, other=other)

    h: dict[str, str] = {}
    if kind in ("token", "full", "forged-csrf", "other") or kind.startswith(("origin:", "host-origin:", "ctype:")):
        h["Authorization"] = f"Bearer {t1}"
    if kind in ("full", "csrf-only") or kind.startswith(("origin:", "host-origin:", "ctype:")):
        h["X-CSRF-Token"] = csrf1
    if kind == "forged-csrf":
        h["X-CSRF-Token"] = "0" * 64
    if kind == "other":
        h["X-CSRF-Token"] = csrf2
    if kind.startswith("bearer:"):
        h["Authorization"] = "Bearer " + kind.split(":", 1)[1]
    if kind.startswith("raw-auth:"):
        h["Authorization"] = kind.split(":", 1)[1]
    if kind.startswith("origin:"):
        h["Origin"] = kind.split(":", 1)[1]
    if kind.startswith("host-origin:"):
        port = urlsplit(base).port
        h["Host"] = f"{kind.split(':', 1)[1]}:{port}"
        h["Origin"] = f"http://{kind.split(':', 1)[1]}:{port}"
    if kind == "bigheader":
        h["Authorization"] = f"Bearer {t1}"
        h["X-Padding"] = "a" * (128 * 1024)

    data: bytes | None = None
    if body is not None:
        h.setdefault("Content-Type", "application/json")
        if kind.startswith("ctype:"):
            h["Content-Type"] = kind.split(":", 1)[1]
        if body == "valid":
            data = json.dumps(submission(mine)).encode()
        elif body == "other-assignment":
            data = json.dumps(submission(other)).encode()
        elif isinstance(body, dict):
            payload = {**submission(mine), **body}
            data = json.dumps(payload).encode()  # lone surrogates go out escaped, as JSON allows
        else:
            data = body

    before = _judgments(db_path)
    try:
        status, headers, content = _request(base, method, path, h, data)
    except (ConnectionError, http.client.HTTPException):
        # the server may close the connection on a request it refuses to read (huge header)
        status, headers, content = 431, {}, b""
    assert 400 <= status < 500, (name, status, content[:300])
    assert _judgments(db_path) == before, name
    # A header past waitress's limit is refused by the HTTP server itself (431, plain text) before
    # the app sees the request; everything else is answered by the app.
    by_app = bool(headers) and status != 431
    if by_app:
        if path.startswith("/api/"):
            assert headers.get("Content-Type", "").startswith("application/json"), (name, headers)
            assert "error" in json.loads(content), name
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), (name, headers)
    assert b"root:" not in content  # no file from outside the app


def test_attack_table_size():
    assert len(ATTACKS) >= 50


def test_twenty_simultaneous_submissions_of_one_assignment_store_one(tmp_path):
    """20 requests for the same judgment released at once: exactly one 201, nineteen 409s."""
    import threading

    from test_human_support import http

    db_path, tokens = make_study(tmp_path, raters=1)
    t = tokens["rater1"]
    with running_server(db_path) as base:
        csrf = csrf_of(base, t)
        aid = http("GET", f"{base}/api/next", token=t)[1]["assignment"]["id"]
        barrier = threading.Barrier(20)
        statuses: list[int] = []
        lock = threading.Lock()

        def submit(k: int) -> None:
            barrier.wait()
            s = http("POST", f"{base}/api/submit", token=t, csrf=csrf, body=submission(aid, comment=f"try {k}"))[0]
            with lock:
                statuses.append(s)

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
    assert sorted(statuses) == [201] + [409] * 19, statuses
    assert _judgments(db_path) == 1
    with sqlite3.connect(db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 8
