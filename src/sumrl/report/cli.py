"""`sumrl report RUN_DIR... --out report.html`: one self-contained HTML file comparing systems.
Parsing only: the config and the job are :mod:`sumrl.report.build`."""

from __future__ import annotations

import argparse

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.report.build import ReportConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="self-contained HTML report: metric table with CIs, paired tests, plots, examples",
        description="Compare evaluated systems (sumrl eval run folders) in one HTML file that needs no network: "
                    "all metrics with 95% CIs, paired bootstrap tests of each RL variant against each baseline, "
                    "the extra-length table, training curves (--train-runs), length distributions, highlighted "
                    "examples and every run's configuration. Roles: baselines = --baseline NAME, else systems "
                    "whose name starts with 'sft'; RL variants = --rl NAME, else the other systems whose name "
                    "does not start with 'base'.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="sumrl eval output folders (metrics.json + predictions.jsonl)")
    p.add_argument("--train-runs", nargs="+", action="extend", dest="train_runs", metavar="DIR",
                   default=argparse.SUPPRESS, help="training run folders (metrics.jsonl) for the RL and SFT plots")
    p.add_argument("--baseline", nargs="+", action="extend", dest="baseline", metavar="NAME",
                   default=argparse.SUPPRESS,
                   help="baseline system for the paired tests; repeatable (default: systems named sft*)")
    p.add_argument("--rl", nargs="+", action="extend", dest="rl", metavar="NAME", default=argparse.SUPPRESS,
                   help="RL variant for the paired tests; repeatable (default: the systems that are neither "
                        "baselines nor named base*)")
    add_dataclass_args(p, ReportConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sumrl.report.build import write_report

    cfg = config_from_args(ReportConfig, args)
    out = write_report(cfg)
    print(f"report: {out}")
    if cfg.markdown:
        print(f"markdown: {cfg.markdown}")
    return 0
