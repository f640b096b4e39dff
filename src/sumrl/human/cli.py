"""`sumrl human create|serve|stats|export`: human evaluation and the human-feedback loop.

Only light imports at module level: `sumrl --help` imports every command module, and Flask,
waitress, numpy and the reward model are needed only when their action runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from sumrl.config import add_dataclass_args, config_from_args, opt, to_dict
from sumrl.errors import ConfigError, SumrlError


@dataclass
class HumanCreateConfig:
    runs: list[str] = opt(default_factory=list, help="run folders written by `sumrl eval` (one system each, >= 2)")
    db: str = opt("", help="path of the new study database (SQLite); must not exist yet")
    pairs_per_doc: int = opt(0, help="judge at most K system pairs per document (0 = all pairs)")
    max_pairs: int = opt(0, help="judge at most this many pairs in total (0 = all)")
    raters: int = opt(1, help="number of raters; one access link is printed per rater")
    rater_names: list[str] = opt(default_factory=list, help="rater names (default: rater1 .. raterN)")
    raters_per_pair: int = opt(0, help="raters who judge each pair (0 = every rater judges every pair; "
                                       ">= 2 overlap is needed for agreement statistics)")
    select: str = opt("random", help="which pairs first: random, or where the reward model is least certain",
                      choices=["random", "uncertain"])
    rm: str | None = opt(None, help="reward model folder scoring the summaries for --select uncertain")
    seed: int = opt(0, help="seed of the pair order and the left/right randomisation")
    base_url: str = opt("http://127.0.0.1:8765", help="address raters reach `sumrl human serve` at (for the links)")

    def validate(self) -> None:
        if len(self.runs) < 2:
            raise ConfigError("--runs needs at least two run folders (pairs compare systems)")
        if not self.db:
            raise ConfigError("--db is required")
        if self.raters < 1:
            raise ConfigError("--raters must be >= 1")
        if self.rater_names and len(self.rater_names) != self.raters:
            raise ConfigError(f"--rater-names gives {len(self.rater_names)} names for --raters {self.raters}")
        if self.select == "uncertain" and not self.rm:
            raise ConfigError("--select uncertain needs --rm DIR (a reward model to measure uncertainty)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("--base-url must start with http:// or https://")


@dataclass
class HumanServeConfig:
    db: str = opt("", help="study database made by `sumrl human create`")
    host: str = opt("127.0.0.1", help="address to bind; anything but loopback exposes the app to the network")
    port: int = opt(8765, help="TCP port (0 = any free port)")
    threads: int = opt(8, help="worker threads of the web server")
    public_origin: list[str] = opt(default_factory=list, help="origin(s) raters' browsers use, e.g. "
                                   "https://rate.example.org behind a TLS proxy; submissions from any other Origin "
                                   "are refused (always allowed: the study's --base-url and the address served)")

    def validate(self) -> None:
        if not self.db:
            raise ConfigError("--db is required")
        bad = [o for o in self.public_origin if not o.startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"--public-origin must start with http:// or https://, got {bad[0]!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        if self.threads < 1:
            raise ConfigError("--threads must be >= 1")


@dataclass
class HumanStatsConfig:
    db: str = opt("", help="study database")
    json: str | None = opt(None, help="also write the statistics to this JSON file")

    def validate(self) -> None:
        if not self.db:
            raise ConfigError("--db is required")


@dataclass
class HumanExportConfig:
    db: str = opt("", help="study database")
    out: str = opt("", help="output preference pairs (JSONL) for `sumrl rm --kind preference` / DPO")
    margin: str = opt("ratings", help="margin: from the 1-7 rating difference, or null",
                      choices=["ratings", "none"])

    def validate(self) -> None:
        if not self.db or not self.out:
            raise ConfigError("--db and --out are required")


def load_rm_score_fn(path: str):
    """The reward model's ``score(documents, summaries, queries)``, imported only when needed."""
    try:
        from sumrl.rewards.reward_model import load_reward_model
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("sumrl.rewards"):
            raise SumrlError("--select uncertain needs sumrl.rewards.reward_model, which this install lacks") from None
        raise
    return load_reward_model(path).score


def run_create(args: argparse.Namespace) -> int:
    cfg = config_from_args(HumanCreateConfig, args)
    from sumrl.human.study import candidate_pairs, create_study, load_runs, select_pairs

    docs = load_runs(cfg.runs)
    cands = candidate_pairs(docs)
    score_fn = load_rm_score_fn(cfg.rm) if cfg.select == "uncertain" else None
    selected = select_pairs(cands, docs, strategy=cfg.select, pairs_per_doc=cfg.pairs_per_doc,
                            max_pairs=cfg.max_pairs, score_fn=score_fn, seed=cfg.seed)
    names = cfg.rater_names or [f"rater{i + 1}" for i in range(cfg.raters)]
    study = create_study(cfg.db, docs, selected, raters=names, raters_per_pair=cfg.raters_per_pair,
                         base_url=cfg.base_url, seed=cfg.seed, info={"config": to_dict(cfg)})
    print(f"study {cfg.db}: {len(docs)} documents, {len(cands)} candidate pairs, {study.n_pairs} selected "
          f"({cfg.select}), {study.n_assignments} assignments", file=sys.stderr)
    print("Access links (shown only now; each is personal -- send it to that rater only):", file=sys.stderr)
    for name, link in study.links.items():
        print(f"{name}\t{link}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(HumanServeConfig, args)
    from sumrl.human.server import RatingServer, is_loopback

    try:
        server = RatingServer(cfg.db, host=cfg.host, port=cfg.port, threads=cfg.threads,
                              public_origins=cfg.public_origin)
    except OSError as e:
        raise SumrlError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    if not is_loopback(cfg.host):
        print(f"warning: listening on {cfg.host}, reachable from the network; the app speaks plain HTTP, so "
              "put it behind a TLS proxy or the raters' tokens travel in clear text", file=sys.stderr)
    print(f"serving {cfg.db} at {server.url} (raters open /r/<token>; Ctrl-C stops)", file=sys.stderr)
    # Ctrl-C / SIGTERM only set the stop flag; the loop checks it every 0.1 s and then closes every
    # connection. (Relying on KeyboardInterrupt surfacing from inside waitress's event loop let a
    # signal that landed at the wrong moment go unnoticed.)
    import signal
    import threading

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = {sig: signal.signal(sig, lambda *_: server.request_stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", file=sys.stderr)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    cfg = config_from_args(HumanStatsConfig, args)
    from sumrl.human.db import open_study
    from sumrl.human.stats import compute_stats, format_stats
    from sumrl.utils.io import write_json

    conn = open_study(cfg.db)
    try:
        s = compute_stats(conn)
    finally:
        conn.close()
    print(format_stats(s))
    if cfg.json:
        write_json(cfg.json, _nan_to_none(s))
    return 0


def _nan_to_none(obj):
    """NaN is not valid JSON: undefined statistics are written as null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def run_export(args: argparse.Namespace) -> int:
    cfg = config_from_args(HumanExportConfig, args)
    from sumrl.human.db import open_study
    from sumrl.human.export import export_pairs

    conn = open_study(cfg.db)
    try:
        n = export_pairs(conn, cfg.out, margin=cfg.margin)
    finally:
        conn.close()
    print(f"wrote {n['exported']} preference pairs to {cfg.out} ({n['ties_skipped']} ties not exported, "
          f"{n['judgments']} judgments)", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("human", help="human evaluation web app and export of human preference pairs",
                              description="Human evaluation: create a study from `sumrl eval` runs, serve the "
                                          "rating app, compute statistics, export preference pairs.")
    sub = p.add_subparsers(dest="human_command", metavar="ACTION")
    actions = [
        ("create", HumanCreateConfig, run_create, "build a study from run folders; prints one link per rater"),
        ("serve", HumanServeConfig, run_serve, "serve the rating web app (localhost by default)"),
        ("stats", HumanStatsConfig, run_stats, "counts, win rates with CIs, inter-rater agreement"),
        ("export", HumanExportConfig, run_export, "write preference pairs for `sumrl rm --kind preference`"),
    ]
    for name, cls, func, help_text in actions:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_dataclass_args(sp, cls)
        sp.set_defaults(func=func)

    def _no_action(_args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=_no_action)
