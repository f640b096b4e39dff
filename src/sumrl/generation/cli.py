"""`sumrl summarize`: summarise documents with any model, writing JSONL."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sumrl.config import DataOptions, GenerationOptions, add_dataclass_args, config_from_args, opt


@dataclass
class SummarizeConfig(DataOptions, GenerationOptions):
    model: str = opt("default", "model: 'default', a packaged name, a model/adapter folder, a .gguf file or a hub id")
    out: str = opt("summaries.jsonl", "output JSONL file (id, prediction, strategy, token counts)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="summarize documents (long ones by truncation or map-reduce chunking)",
                       description="Summarize documents with a model. Long documents are truncated or summarized "
                                   "hierarchically (--strategy chunk). Reference summaries are not required.")
    add_dataclass_args(p, SummarizeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sumrl.data import load_data
    from sumrl.evaluation.harness import generate_predictions
    from sumrl.utils.io import write_jsonl

    cfg = config_from_args(SummarizeConfig, args)
    examples = load_data(cfg.data, cfg.split, fields=_fields(cfg), skip_invalid=cfg.skip_invalid,
                         require_summary=False, limit=cfg.limit, seed=cfg.seed)
    rows = generate_predictions(cfg.model, examples, cfg)
    write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} summaries to {cfg.out}")
    return 0


def _fields(cfg):
    from sumrl.data import FieldMap

    return FieldMap(id=cfg.id_field, document=cfg.document_field, summary=cfg.summary_field, query=cfg.query_field)
