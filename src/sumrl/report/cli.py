"""`sumrl report RUN_DIR... --out report.html`: one self-contained HTML file comparing systems."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass

from sumrl.config import add_dataclass_args, config_from_args, opt
from sumrl.errors import ConfigError


@dataclass
class ReportConfig:
    # The list options are registered by hand below (cli=False here): they must be repeatable
    # (`--baseline sft --baseline sft-cleaned`), which the generic list flag (nargs="+", last
    # one wins) is not. They stay fields so that YAML recipes can set them.
    runs: list[str] = opt(default_factory=list, help="eval run folders (positional)", cli=False)
    out: str = opt("report.html", "output HTML file (written atomically)")
    train_runs: list[str] = opt(default_factory=list, cli=False,
                                help="training run folders whose metrics.jsonl feeds the RL/SFT plots")
    baseline: typing.Optional[list[str]] = opt(None, cli=False, help="baseline systems of the paired tests")
    rl: typing.Optional[list[str]] = opt(None, cli=False, help="RL variants of the paired tests")
    n_examples: int = opt(5, "number of test documents shown side by side (drawn with --seed)")
    seed: int = opt(0, "seed of the example sampling and of the bootstrap")
    title: typing.Optional[str] = opt(None, "report title (none: made from the system names)")
    n_bootstrap: int = opt(1000, "bootstrap resamples of the paired tests")
    excerpt_words: int = opt(250, "words of the source shown per example (facts are checked on the full source)")
    copy_min_words: int = opt(8, "shortest verbatim source copy highlighted, in words")
    markdown: typing.Optional[str] = opt(None, "also write the comparison, paired-test and extra-length tables "
                                               "as Markdown to this file (for docs and notes)")
    examples_by: typing.Optional[str] = opt(None, "BASELINE:METRIC: show instead the documents at the 25th/50th/75th "
                                                  "percentile of the per-document difference RL minus BASELINE in "
                                                  "METRIC (mean over the RL variants), e.g. sft:la_rougeL -- a rule "
                                                  "fixed in advance, stated in the report")

    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("give at least one eval run folder: sumrl report RUN_DIR... --out report.html")
        for name in ("n_examples", "excerpt_words", "copy_min_words"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.n_bootstrap < 1:
            raise ConfigError("--n-bootstrap must be >= 1")
        if self.examples_by is not None and len([x for x in self.examples_by.split(":") if x]) != 2:
            raise ConfigError(f"--examples-by: expected BASELINE:METRIC (e.g. sft:la_rougeL), got {self.examples_by!r}")


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
    from sumrl.report.build import build_report

    cfg = config_from_args(ReportConfig, args)
    out = build_report(cfg.runs, cfg.out, train_runs=cfg.train_runs, baselines=cfg.baseline, rl=cfg.rl,
                       n_examples=cfg.n_examples, seed=cfg.seed, title=cfg.title, n_bootstrap=cfg.n_bootstrap,
                       excerpt_words=cfg.excerpt_words, copy_min_words=cfg.copy_min_words,
                       markdown_out=cfg.markdown,
                       examples_by=tuple(cfg.examples_by.split(":")) if cfg.examples_by else None)
    print(f"report: {out}")
    if cfg.markdown:
        print(f"markdown: {cfg.markdown}")
    return 0
