"""Dataset statistics: counts, length distributions, and how much of the data fits a model.

Lengths are in whitespace words always, and in the model's tokens when a tokenizer is given
(tokens are what decide truncation/chunking; words are comparable across models). Token counts
exclude special tokens and the prompt template, so "exceeds the context" is a lower bound on
what a real prompt needs.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from sumrl.config import opt
from sumrl.data.options import DataSourceConfig, load_source
from sumrl.data.schema import Example
from sumrl.errors import ConfigError


@dataclass
class DataStatsConfig(DataSourceConfig):
    """``sumrl data stats``."""

    model: str | None = opt(None, "also count lengths in this model's tokens and check its context length")
    context_length: int | None = opt(None, "context length to check against (default: the tokenizer's "
                                           "model_max_length)")
    max_input_tokens: int | None = opt(None, "count documents (+ query) longer than this many tokens (needs --model)")
    json: bool = opt(False, "print the statistics as JSON instead of a table")

    def validate(self) -> None:
        super().validate()
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError("--max-input-tokens must be at least 1")
        if self.max_input_tokens is not None and not self.model:
            raise ConfigError("--max-input-tokens needs --model (token counts come from the model's tokenizer)")
        if self.context_length is not None and not self.model:
            raise ConfigError("--context-length needs --model")

# Tokenizers without a configured limit report a huge sentinel (int(1e30)) as model_max_length.
_NO_LIMIT = 10**9


def distribution(values: list[int]) -> dict[str, float | int] | None:
    """n, mean, median, p90, max of a list of lengths (None for an empty list)."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "max": int(a.max())}


def _words(text: str) -> int:
    return len(text.split())


def _token_lengths(tokenizer: Any, texts: list[str], batch_size: int = 64) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        # verbose=False: transformers otherwise warns for every text longer than model_max_length,
        # which is exactly what we are here to count.
        enc = tokenizer(texts[i:i + batch_size], add_special_tokens=False, truncation=False, verbose=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def context_length_of(tokenizer: Any, context_length: int | None = None) -> int | None:
    """Explicit ``context_length`` if given, else the tokenizer's model_max_length if it is a real limit."""
    if context_length is not None:
        return int(context_length)
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < _NO_LIMIT else None


def compute_stats(examples: list[Example], *, tokenizer: Any = None, context_length: int | None = None,
                  max_input_tokens: int | None = None) -> dict[str, Any]:
    """Statistics of a list of examples, as a JSON-serialisable dict.

    Keys: ``n_examples``, ``splits`` (count per split), ``n_with_query``, ``n_with_summary``,
    ``n_references``, ``references_per_example``, ``words`` {document, summary, query: distribution},
    and with a tokenizer ``tokens`` (same shape), ``context_length``, ``n_exceed_context``,
    ``max_input_tokens``, ``n_exceed_budget``. The input of an example is its document plus its
    query (if any), so the "exceeds" counts use document + query tokens.
    """
    docs = [ex.document for ex in examples]
    refs = [r for ex in examples for r in ex.references]
    queries = [ex.query for ex in examples if ex.query]
    stats: dict[str, Any] = {
        "n_examples": len(examples),
        "splits": dict(sorted(Counter(str(ex.meta.get("split", "?")) for ex in examples).items())),
        "n_with_query": sum(1 for ex in examples if ex.query),
        "n_with_summary": sum(1 for ex in examples if ex.references),
        "n_references": len(refs),
        "references_per_example": distribution([len(ex.references) for ex in examples]),
        "words": {
            "document": distribution([_words(t) for t in docs]),
            "summary": distribution([_words(t) for t in refs]),
            "query": distribution([_words(t) for t in queries]),
        },
    }
    if tokenizer is None:
        if max_input_tokens is not None:
            from sumrl.errors import ConfigError

            raise ConfigError("--max-input-tokens needs --model (token counts come from the model's tokenizer)")
        return stats
    # Documents repeat in query-focused data (one meeting, many queries): tokenize each once.
    unique_docs = list(dict.fromkeys(docs))
    doc_len = dict(zip(unique_docs, _token_lengths(tokenizer, unique_docs)))
    unique_q = list(dict.fromkeys(queries))
    q_len = dict(zip(unique_q, _token_lengths(tokenizer, unique_q)))
    input_len = [doc_len[ex.document] + (q_len[ex.query] if ex.query else 0) for ex in examples]
    ctx = context_length_of(tokenizer, context_length)
    stats["tokens"] = {
        "document": distribution([doc_len[d] for d in docs]),
        "summary": distribution(_token_lengths(tokenizer, refs)),
        "query": distribution([q_len[q] for q in queries]),
    }
    stats["context_length"] = ctx
    stats["n_exceed_context"] = sum(1 for n in input_len if n > ctx) if ctx is not None else None
    stats["max_input_tokens"] = max_input_tokens
    stats["n_exceed_budget"] = (sum(1 for n in input_len if n > max_input_tokens)
                                if max_input_tokens is not None else None)
    return stats


def dataset_stats(cfg: DataStatsConfig, *, tokenizer: Any = None, context_length: int | None = None) -> dict:
    """``sumrl data stats``: :func:`compute_stats` of ``cfg``'s data, with what was read. The caller
    passes the model's tokenizer and context length (models sit above data in the layering:
    :func:`sumrl.models.loading.tokenizer_and_context`)."""
    examples, n_skipped, _ = load_source(cfg, require_summary=False)
    stats = compute_stats(examples, tokenizer=tokenizer, context_length=context_length,
                          max_input_tokens=cfg.max_input_tokens)
    return {"data": cfg.data, "split": cfg.split, "model": cfg.model, "n_skipped": n_skipped, **stats}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if not v.is_integer() else f"{int(v):,}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_stats(stats: dict, file: Any = None) -> None:
    """The statistics of :func:`dataset_stats` as a headline and a length table (rich), then the
    context and budget counts when tokens were counted."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, highlight=False, markup=False, soft_wrap=False)
    n_skipped = stats["n_skipped"]
    splits = ", ".join(f"{k} {v:,}" for k, v in stats["splits"].items())
    console.print(f"{stats['data']} (split {stats['split']}): {stats['n_examples']:,} examples ({splits}); "
                  f"{stats['n_with_query']:,} with a query; {stats['n_references']:,} references"
                  + (f"; {n_skipped:,} invalid rows skipped" if n_skipped else ""))
    table = Table(show_header=True, header_style="bold")
    for col in ("length", "unit", "n", "mean", "median", "p90", "max"):
        table.add_column(col, justify="left" if col in ("length", "unit") else "right")
    for unit in ("words", "tokens"):
        for part in ("document", "summary", "query"):
            d = stats.get(unit, {}).get(part)
            if d:
                table.add_row(part, unit, *(_fmt(d[k]) for k in ("n", "mean", "median", "p90", "max")))
    console.print(table)
    if "tokens" in stats:
        n = stats["n_examples"]
        ctx = stats["context_length"]
        if ctx is None:
            console.print("context length: unknown (neither the model config nor the tokenizer declares it; pass "
                          "--context-length)")
        else:
            console.print(f"inputs longer than the context ({ctx:,} tokens): {stats['n_exceed_context']:,} of {n:,}")
        if stats["max_input_tokens"] is not None:
            console.print(f"inputs longer than the budget ({stats['max_input_tokens']:,} tokens): "
                          f"{stats['n_exceed_budget']:,} of {n:,}")
