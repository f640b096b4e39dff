"""One evaluation run (``sumrl eval``'s config and job): generate predictions (or read a
predictions file), score them, aggregate with bootstrap CIs, write the run folder
(predictions.jsonl, metrics.json, config.json; docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sumrl.config import opt
from sumrl.data.options import DataOptions
from sumrl.errors import ConfigError
from sumrl.generation.options import GenerationOptions

# prediction rows -> one dict of extra per-example metrics per row
Judges = Callable[[list[dict]], list[dict]]


@dataclass
class EvalConfig(DataOptions, GenerationOptions):
    model: typing.Optional[str] = opt(None, "model to evaluate ('default', a packaged name, a model/adapter folder, "
                                            "a .gguf file, a hub id); or use --predictions")
    predictions: typing.Optional[str] = opt(None, "score an existing predictions.jsonl (from sumrl eval or summarize) "
                                                  "instead of generating")
    out: str = opt("runs/eval", "output folder: predictions.jsonl, metrics.json, config.json")
    system: typing.Optional[str] = opt(None, "system name shown in tables and reports (default: from the model)")
    cleanup: bool = opt(False, "apply the seed paper's post-processing (drop a leading 'Sure, here is...' line, "
                               "keep text before the first newline) before scoring")
    semantic: bool = opt(True, "compute embedding similarity to reference and source (all-MiniLM-L6-v2)")
    n_bootstrap: int = opt(1000, "bootstrap resamples for the 95% confidence intervals")
    judges: bool = opt(False, "also score with the learned judges: factual_support, unsupported_sent_rate "
                              "(factual-consistency judge) and coherence_score (coherence judge, 1..5)")
    knowledge: typing.Optional[str] = opt(None, "with --judges: folder of local text (*.txt, *.md, *.jsonl 'text') "
                                                "against which source-unsupported sentences are checked "
                                                "(knowledge_supported; offline BM25)")

    def validate(self) -> None:
        if not self.model and not self.predictions:
            raise ConfigError("give --model to generate or --predictions to score an existing file")
        if self.n_bootstrap < 1:
            raise ConfigError(f"--n-bootstrap must be at least 1, got {self.n_bootstrap}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        self.check_generation()
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError(f"--max-input-tokens must be at least 1, got {self.max_input_tokens}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("--temperature must be > 0 and --top-p in (0, 1]")
        if self.knowledge and not self.judges:
            raise ConfigError("--knowledge needs --judges (it is part of the factual-consistency judge)")


def evaluate(cfg: EvalConfig, *, judges: Judges | None = None, model_and_tokenizer: tuple | None = None,
             progress: bool = True) -> tuple[dict, Path]:
    """Run one evaluation; returns (metrics.json content, output folder).

    ``judges`` scores rows with the learned judges (``cfg.judges``): the judges are reward models,
    a layer above evaluation, so the caller passes them in
    (:func:`sumrl.rewards.judge_metrics.judge_metrics`), as ``sumrl eval`` does."""
    from sumrl.data.formats import read_predictions, read_run_metrics
    from sumrl.evaluation.harness import aggregate_metrics, score_rows, write_run
    from sumrl.generation.predict import generate_predictions

    if cfg.judges and judges is None:
        raise ConfigError("--judges: no judge scorer was given to evaluate() (pass sumrl.rewards.judge_metrics)")

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.predictions:
        rows = read_predictions(cfg.predictions)
        if cfg.limit is not None:
            rows = rows[: cfg.limit]
        system = cfg.system or rows[0].get("system") or Path(cfg.predictions).stem
    else:
        from sumrl.data import FieldMap, load_data

        examples = load_data(cfg.data, cfg.split, fields=FieldMap(id=cfg.id_field, document=cfg.document_field,
                                                                  summary=cfg.summary_field, query=cfg.query_field),
                             skip_invalid=cfg.skip_invalid, limit=cfg.limit, seed=cfg.seed)
        system = cfg.system or Path(str(cfg.model)).name or str(cfg.model)
        rows = generate_predictions(cfg.model, examples, cfg, system=system,
                                    partial_path=out / "predictions.partial.jsonl",
                                    model_and_tokenizer=model_and_tokenizer, progress=progress)
    t_gen = time.perf_counter() - t0
    if cfg.cleanup and not cfg.system:
        system = f"{system}-cleaned"
    score_rows(rows, cleanup=cfg.cleanup, semantic=cfg.semantic, judges=judges if cfg.judges else None)
    metrics = aggregate_metrics(rows, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    t_all = time.perf_counter() - t0
    strategies: dict[str, int] = {}
    for r in rows:
        strategies[r.get("strategy", "none")] = strategies.get(r.get("strategy", "none"), 0) + 1
    write_run(out, rows, metrics, dataclasses.asdict(cfg), system,
              extra={"strategies": strategies, "seconds": {"generate": round(t_gen, 2), "total": round(t_all, 2)}})
    partial = out / "predictions.partial.jsonl"
    if partial.exists():
        partial.unlink()
    return read_run_metrics(out / "metrics.json"), out
