"""The rating web app (Flask, served by waitress).

Routes:
  GET  /r/<token>            the rating page (an HTML shell; content arrives as JSON)
  GET  /api/next             the rater's first unjudged assignment + progress
  GET  /api/assignment/<id>  one of the rater's own assignments (with its judgment, if any)
  POST /api/submit           a judgment (JSON)
  GET  /healthz              liveness

Security model (see docs/human_eval.md):
* Authentication: every API call carries the rater's token in ``Authorization: Bearer``; the
  page reads it from its own URL. Unknown/missing token -> 403. A rater can only touch their own
  assignments: another rater's assignment id is answered 404, exactly like a non-existent one.
* CSRF: POSTs need ``X-CSRF-Token`` (HMAC of the study secret and the rater id, embedded in
  the page) and ``Content-Type: application/json``; a present ``Origin`` must be one of the
  configured public origins (the study's ``--base-url``, the address served, ``--public-origin``),
  never compared with the request's own ``Host`` header, which the client controls.
  A bearer header is not sent automatically by browsers, so this is defence in depth.
* Text is never interpreted as HTML: the page inserts it with ``textContent`` and the shell is
  rendered by Jinja with autoescaping; a strict Content-Security-Policy forbids inline scripts.
* Request bodies are capped (``MAX_CONTENT_LENGTH``, 413) and every field is validated (400),
  ids included (an id past SQLite's 64-bit range is a 400, not a crash); every error is JSON.
* System names and which summary is "a" never leave the server; the client only sees left/right.
"""

from __future__ import annotations

import hmac
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, g, jsonify, render_template, request

from sumrl.human import db
from sumrl.human.study import csrf_token, rater_for_token

MAX_BODY_BYTES = 16 * 1024
MAX_COMMENT_CHARS = 2000
SIDES = ("left", "right")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


MAX_ID = 2**63 - 1  # SQLite INTEGER range: a larger Python int makes sqlite3 raise OverflowError


class BadRequest(Exception):
    pass


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased, default ports dropped (as browsers send it)."""
    u = urlsplit(url.strip())
    scheme, host = u.scheme.lower(), (u.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = u.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def validate_submission(body: Any) -> dict:
    """Check a submission's shape and ranges; returns the cleaned values or raises BadRequest.

    Exact keys only: an unexpected key is more likely a client bug than something to ignore."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    allowed = {"assignment_id", "choice", "ratings", "comment", "duration_ms"}
    extra = set(body) - allowed
    if extra:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(extra))}")
    aid = body.get("assignment_id")
    if not isinstance(aid, int) or isinstance(aid, bool) or not 1 <= aid <= MAX_ID:
        raise BadRequest("assignment_id must be a positive integer (at most 2**63 - 1)")
    choice = body.get("choice")
    if choice not in ("left", "right", "tie"):
        raise BadRequest("choice must be 'left', 'right' or 'tie'")
    ratings = body.get("ratings")
    if not isinstance(ratings, dict) or set(ratings) != set(SIDES):
        raise BadRequest("ratings must have exactly 'left' and 'right'")
    clean: dict[str, dict[str, int]] = {}
    for side in SIDES:
        r = ratings[side]
        if not isinstance(r, dict) or set(r) != set(db.CRITERIA):
            raise BadRequest(f"ratings.{side} must rate exactly {', '.join(db.CRITERIA)}")
        for crit, v in r.items():
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 7:
                raise BadRequest(f"ratings.{side}.{crit} must be an integer from 1 to 7")
        clean[side] = dict(r)
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise BadRequest(f"comment must be a string of at most {MAX_COMMENT_CHARS} characters")
    duration = body.get("duration_ms")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool)
                                 or not 0 <= duration <= 7 * 24 * 3600 * 1000):
        raise BadRequest("duration_ms must be a non-negative integer")
    return {"assignment_id": aid, "choice": choice, "ratings": clean, "comment": comment.strip(),
            "duration_ms": duration}


def create_app(db_path: str | Path, public_origins: list[str] | tuple[str, ...] = ()) -> Flask:
    """The app; ``public_origins`` are the origins raters' browsers may POST from (the study's
    ``--base-url`` is always one; :class:`~sumrl.human.server.RatingServer` adds its own address).
    They live in ``app.config["PUBLIC_ORIGINS"]``."""
    import json

    db_path = Path(db_path)
    # Fail at start-up (one-line error) rather than on the first request.
    conn = db.open_study(db_path)
    secret = db.get_meta(conn, "secret")
    try:
        base_url = (json.loads(db.get_meta(conn, "info") or "{}").get("config") or {}).get("base_url")
    except (ValueError, AttributeError):
        base_url = None
    conn.close()
    if not secret:
        raise RuntimeError(f"{db_path}: study has no secret")

    here = Path(__file__).parent
    app = Flask("sumrl.human", template_folder=str(here / "templates"), static_folder=str(here / "static"),
                static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # Werkzeug answers 413 past this
    app.json.sort_keys = False  # keep payload keys in the order written
    app.config["PUBLIC_ORIGINS"] = {origin_of(o) for o in [*public_origins, *([base_url] if base_url else [])]}

    def conn_() -> sqlite3.Connection:
        if "conn" not in g:
            g.conn = db.connect(db_path)
        return g.conn

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        c = g.pop("conn", None)
        if c is not None:
            c.close()

    @app.after_request
    def _headers(resp):
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        # The token is in the page URL: never leak it in a Referer header.
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def json_error(status: int, message: str):
        resp = jsonify({"error": message})
        resp.status_code = status
        return resp

    for status, msg in ((400, "bad request"), (403, "forbidden"), (404, "not found"), (405, "method not allowed"),
                        (413, f"request body too large (max {MAX_BODY_BYTES} bytes)"), (500, "internal error")):
        app.register_error_handler(status, lambda e, s=status, m=msg: json_error(s, getattr(e, "description", m)
                                                                                  if s != 413 else m))

    def current_rater() -> sqlite3.Row:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        rater = rater_for_token(conn_(), token)
        if rater is None:
            abort(403, description="missing or unknown rater token")
        return rater

    def check_csrf(rater: sqlite3.Row) -> None:
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), csrf_token(secret, rater["rater_id"]).encode()):
            abort(403, description="missing or invalid CSRF token")
        origin = request.headers.get("Origin")
        # Compared with the configured origins, not with the Host header: a DNS-rebinding page
        # sends a Host and an Origin that agree with each other.
        if origin is not None and origin_of(origin) not in app.config["PUBLIC_ORIGINS"]:
            abort(403, description="cross-origin request refused")
        if request.mimetype != "application/json":
            # Cross-site HTML forms cannot send application/json without a CORS preflight.
            abort(403, description="submissions must be application/json")

    def progress(rater_id: int) -> dict:
        row = conn_().execute(
            "SELECT COUNT(*) AS total, COUNT(j.judgment_id) AS done FROM assignments a "
            "LEFT JOIN judgments j ON j.assignment_id = a.assignment_id WHERE a.rater_id = ?",
            (rater_id,)).fetchone()
        return {"done": row["done"], "total": row["total"]}

    def assignment_payload(row: sqlite3.Row) -> dict:
        left, right = (row["text_a"], row["text_b"]) if row["left_is_a"] else (row["text_b"], row["text_a"])
        return {"id": row["assignment_id"], "position": row["position"] + 1, "document": row["document"],
                "query": row["query"], "left": left, "right": right}

    ASSIGNMENT_SQL = (
        "SELECT a.assignment_id, a.position, a.left_is_a, a.pair_id, d.document, d.query, "
        "sa.text AS text_a, sb.text AS text_b, sa.summary_id AS sid_a, sb.summary_id AS sid_b "
        "FROM assignments a JOIN pairs p ON p.pair_id = a.pair_id "
        "JOIN documents d ON d.doc_key = p.doc_key "
        "JOIN summaries sa ON sa.summary_id = p.summary_a JOIN summaries sb ON sb.summary_id = p.summary_b ")

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @app.get("/r/<token>")
    def page(token: str):
        rater = rater_for_token(conn_(), token)
        if rater is None:
            return render_template("denied.html"), 403
        return render_template("rate.html", rater_name=rater["name"],
                               csrf=csrf_token(secret, rater["rater_id"]), criteria=db.CRITERIA)

    @app.get("/api/next")
    def next_assignment():
        rater = current_rater()
        row = conn_().execute(
            ASSIGNMENT_SQL + "LEFT JOIN judgments j ON j.assignment_id = a.assignment_id "
            "WHERE a.rater_id = ? AND j.judgment_id IS NULL ORDER BY a.position LIMIT 1",
            (rater["rater_id"],)).fetchone()
        return jsonify({"progress": progress(rater["rater_id"]),
                        "assignment": None if row is None else assignment_payload(row)})

    @app.get("/api/assignment/<int:assignment_id>")
    def get_assignment(assignment_id: int):
        rater = current_rater()
        if assignment_id > MAX_ID:
            abort(400, description="assignment id out of range")
        row = conn_().execute(ASSIGNMENT_SQL + "WHERE a.assignment_id = ? AND a.rater_id = ?",
                              (assignment_id, rater["rater_id"])).fetchone()
        if row is None:
            abort(404, description="no such assignment")
        out = assignment_payload(row)
        j = conn_().execute("SELECT judgment_id, choice, comment FROM judgments WHERE assignment_id = ?",
                            (assignment_id,)).fetchone()
        out["judgment"] = None
        if j is not None:
            left_sid = row["sid_a"] if row["left_is_a"] else row["sid_b"]
            to_side = {"a": "left" if row["left_is_a"] else "right",
                       "b": "right" if row["left_is_a"] else "left", "tie": "tie"}
            ratings: dict[str, dict[str, int]] = {"left": {}, "right": {}}
            for r in conn_().execute("SELECT summary_id, criterion, value FROM ratings WHERE judgment_id = ?",
                                     (j["judgment_id"],)):
                ratings["left" if r["summary_id"] == left_sid else "right"][r["criterion"]] = r["value"]
            out["judgment"] = {"choice": to_side[j["choice"]], "ratings": ratings, "comment": j["comment"]}
        return jsonify(out)

    @app.post("/api/submit")
    def submit():
        rater = current_rater()
        check_csrf(rater)
        # Parsed here rather than by request.get_json: deep nesting (RecursionError) and other
        # hostile bodies must be a JSON 400, not a 500.
        from sumrl.errors import DataError
        from sumrl.utils.io import parse_json_text

        try:
            body = parse_json_text(request.get_data(cache=False))
        except DataError as e:
            abort(400, description=f"body must be valid JSON ({e.reason})")
        try:
            sub = validate_submission(body)
        except BadRequest as e:
            abort(400, description=str(e))
        c = conn_()
        with db.write(c):
            # Inside the IMMEDIATE transaction: ownership and "not judged yet" cannot change
            # between this check and the insert.
            row = c.execute(ASSIGNMENT_SQL + "WHERE a.assignment_id = ? AND a.rater_id = ?",
                            (sub["assignment_id"], rater["rater_id"])).fetchone()
            if row is None:
                abort(404, description="no such assignment")
            if c.execute("SELECT 1 FROM judgments WHERE assignment_id = ?", (sub["assignment_id"],)).fetchone():
                return json_error(409, "this assignment is already judged")
            left_is_a = bool(row["left_is_a"])
            choice = {"tie": "tie", "left": "a" if left_is_a else "b", "right": "b" if left_is_a else "a"}[sub["choice"]]
            jid = c.execute("INSERT INTO judgments (assignment_id, choice, comment, duration_ms) VALUES (?, ?, ?, ?)",
                            (sub["assignment_id"], choice, sub["comment"], sub["duration_ms"])).lastrowid
            sid = {"left": row["sid_a"] if left_is_a else row["sid_b"],
                   "right": row["sid_b"] if left_is_a else row["sid_a"]}
            c.executemany("INSERT INTO ratings (judgment_id, summary_id, criterion, value) VALUES (?, ?, ?, ?)",
                          [(jid, sid[side], crit, v) for side in SIDES for crit, v in sub["ratings"][side].items()])
        resp = jsonify({"ok": True, "progress": progress(rater["rater_id"])})
        resp.status_code = 201
        return resp

    return app
