"""Producing predictions: generate a summary per example into prediction rows (the
``predictions.jsonl`` row format of docs/architecture.md, without ``metrics``), checkpointed so
that a killed run resumes; and ``sumrl summarize``'s config and job. Scoring the rows is
:mod:`sumrl.evaluation`'s part.

Checkpointing: finished rows are appended to ``predictions.partial.jsonl`` as they are produced,
so a killed evaluation resumes where it stopped instead of regenerating.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sumrl.config import opt
from sumrl.data.options import DataOptions
from sumrl.data.schema import Example
from sumrl.generation.options import GenerationOptions
from sumrl.generation.summarize import summarize
from sumrl.utils.faults import kill_point
from sumrl.utils.io import iter_jsonl_file, write_jsonl


@dataclass
class SummarizeConfig(DataOptions, GenerationOptions):
    # DataOptions.split defaults to "test" (evaluation); summarising a user's documents means all of
    # them (a small file without a split column may have no "test" row at all)
    split: str = opt("all", "split to summarize: all, train, val or test")
    model: str = opt("default", "model: 'default', a packaged name, a model/adapter folder, a .gguf file or a hub id")
    out: str = opt("summaries.jsonl", "output JSONL file (id, prediction, strategy, token counts)")

    def validate(self) -> None:
        self.check_generation()


def generate_predictions(model_spec: str | Any, examples: list[Example], opts: Any, *, system: str | None = None,
                         partial_path: str | Path | None = None, model_and_tokenizer: tuple | None = None,
                         progress: bool = True) -> list[dict]:
    """Generate a summary per example. ``opts`` is any config with the GenerationOptions fields."""
    from sumrl.models.loading import load_model

    done: dict[str, dict] = {}
    if partial_path and Path(partial_path).exists():
        # a line torn by a kill is dropped (and regenerated); any other bad line is an error. The
        # file is rewritten without the torn piece, so that the appends below start on a new line.
        for _, r in iter_jsonl_file(partial_path, tolerate_torn_tail=True):
            done[r["id"]] = r
        write_jsonl(partial_path, done.values())
    todo = [ex for ex in examples if ex.id not in done]
    if todo:
        model, tok = model_and_tokenizer or load_model(model_spec, dtype=opts.dtype)
        settings = opts.generation_settings(progress=progress)
        # generate in blocks so that progress is saved as it is made
        block = max(settings.batch_size * 2, 1)
        fh = open(partial_path, "a", encoding="utf-8") if partial_path else None
        try:
            for s in range(0, len(todo), block):
                part = todo[s:s + block]
                outs = summarize(model, tok, part, settings)
                for ex, o in zip(part, outs):
                    row = {
                        "id": ex.id, "system": system, "document": ex.document, "query": ex.query,
                        "references": ex.references, "raw_prediction": o.text, "prediction": o.text,
                        "strategy": o.strategy, "n_document_tokens": o.n_document_tokens,
                        "n_input_tokens": o.n_input_tokens, "n_output_tokens": o.n_output_tokens,
                        "finished": o.finished, "n_chunks": o.n_chunks, "depth": o.depth,
                    }
                    done[ex.id] = row
                    if fh:
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if fh:
                    fh.flush()
                    os.fsync(fh.fileno())
                kill_point("eval-after-block")
        except OSError as e:  # a full disk names no file: say which output it was
            if e.filename is None and partial_path:
                e.filename = str(partial_path)
            raise
        finally:
            if fh:
                fh.close()
    return [done[ex.id] for ex in examples]


def summarize_to_file(cfg: SummarizeConfig) -> int:
    """``sumrl summarize``: summarise the configured documents into ``cfg.out``; returns the count."""
    from sumrl.data import FieldMap, load_data

    fields = FieldMap(id=cfg.id_field, document=cfg.document_field, summary=cfg.summary_field, query=cfg.query_field)
    examples = load_data(cfg.data, cfg.split, fields=fields, skip_invalid=cfg.skip_invalid, require_summary=False,
                         limit=cfg.limit, seed=cfg.seed)
    rows = generate_predictions(cfg.model, examples, cfg)
    write_jsonl(cfg.out, rows)
    return len(rows)
