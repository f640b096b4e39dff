"""`sumrl human create|serve|stats|export`: human evaluation and the human-feedback loop.

Parsing only: each action's config and job live next to the code they configure (study.py,
server.py, stats.py, export.py). Those modules import Flask, waitress and the reward model only
when their action runs: `sumrl --help` imports every command module.
"""

from __future__ import annotations

import argparse
import sys

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.human.export import HumanExportConfig
from sumrl.human.server import HumanServeConfig
from sumrl.human.stats import HumanStatsConfig
from sumrl.human.study import HumanCreateConfig

# Status lines go to stderr, results to stdout (`sumrl human create ... > links.tsv` keeps only the links).


def run_create(args: argparse.Namespace) -> int:
    from sumrl.human.study import create_from_runs

    cfg = config_from_args(HumanCreateConfig, args)
    study = create_from_runs(cfg)
    print(f"study {cfg.db}: {study.n_documents} documents, {study.n_candidates} candidate pairs, {study.n_pairs} "
          f"selected ({cfg.select}), {study.n_assignments} assignments", file=sys.stderr)
    print("Access links (shown only now; each is personal -- send it to that rater only):", file=sys.stderr)
    for name, link in study.links.items():
        print(f"{name}\t{link}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from sumrl.human.server import is_loopback, open_server, serve_until_signalled

    cfg = config_from_args(HumanServeConfig, args)
    server = open_server(cfg)
    if not is_loopback(cfg.host):
        from sumrl.utils.console import get_logger

        get_logger(__name__).warning(f"warning: listening on {cfg.host}, reachable from the network; the app speaks "
                                     "plain HTTP, so put it behind a TLS proxy or the raters' tokens travel in clear "
                                     "text")
    print(f"serving {cfg.db} at {server.url} (raters open /r/<token>; Ctrl-C stops)", file=sys.stderr)
    serve_until_signalled(server)
    print("stopped", file=sys.stderr)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from sumrl.human.stats import format_stats, study_stats

    print(format_stats(study_stats(config_from_args(HumanStatsConfig, args))))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from sumrl.human.export import export_study

    cfg = config_from_args(HumanExportConfig, args)
    n = export_study(cfg)
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
