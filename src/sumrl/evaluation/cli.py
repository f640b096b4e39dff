"""`sumrl eval`: evaluate a model (or existing predictions) with every summary metric + 95% CIs."""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from sumrl.config import DataOptions, GenerationOptions, add_dataclass_args, config_from_args, opt
from sumrl.errors import ConfigError, DataError


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
        if self.no_repeat_ngram < 0:
            raise ConfigError(f"--no-repeat-ngram must be >= 0 (0 = off), got {self.no_repeat_ngram}")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError(f"--max-input-tokens must be at least 1, got {self.max_input_tokens}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("--temperature must be > 0 and --top-p in (0, 1]")
        if self.knowledge and not self.judges:
            raise ConfigError("--knowledge needs --judges (it is part of the factual-consistency judge)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate summaries: ROUGE, length-adjusted ROUGE, BLEU, similarity, "
                                    "length, copying, repetition, faithfulness (95%% CIs)",
                       description="Generate summaries for a dataset split with --model (or read --predictions) "
                                   "and score them. Writes predictions.jsonl, metrics.json and config.json.")
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=run)


def load_prediction_rows(path: str) -> list[dict]:
    """Read and check a predictions file; any problem is one DataError naming file, line and field.

    Checked here, before any scoring, so that nothing fails after minutes of work: types of every
    field that is read (``prediction``, ``raw_prediction``, ``document``, ``query``, ``references``),
    unique ids (pairing across systems is by id, as in ``sumrl report``), valid Unicode.
    """
    from sumrl.utils.io import iter_jsonl_file

    p = Path(path)
    if p.is_dir():
        p = p / "predictions.jsonl"
    if not p.exists():
        raise DataError("predictions file not found", file=str(p))
    rows = []
    seen: dict[str, int] = {}
    for i, r in iter_jsonl_file(p):
        if not isinstance(r, dict):
            raise DataError("expected a JSON object", file=str(p), line=i)
        for k in ("id", "prediction"):
            if k not in r:
                raise DataError("missing field", file=str(p), line=i, field=k)
        rid = r["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataError(f"must be a string or an integer, got {type(rid).__name__}", file=str(p), line=i,
                            field="id")
        key = str(rid)
        if key in seen:
            raise DataError(f"duplicate id {key!r} (first on line {seen[key]})", file=str(p), line=i, field="id")
        seen[key] = i
        for k, required in (("prediction", True), ("raw_prediction", False), ("document", False),
                            ("query", False), ("system", False)):
            v = r.get(k)
            if (v is None and not required) or isinstance(v, str):
                continue
            raise DataError(f"must be a string{'' if required else ' or null'}, got "
                            f"{'null' if v is None else type(v).__name__}", file=str(p), line=i, field=k)
        refs = r.get("references", r.get("summary"))
        if isinstance(refs, str):
            refs = [refs]
        if not refs or not isinstance(refs, list) or not all(isinstance(x, str) for x in refs):
            raise DataError("needs reference summaries (a string or a list of strings)", file=str(p), line=i,
                            field="references")
        r["references"] = refs
        if r.get("document") is None:
            r["document"] = ""
        if r.get("raw_prediction") is None:
            r.pop("raw_prediction", None)
        rows.append(r)
    if not rows:
        raise DataError("empty file", file=str(p))
    return rows


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, args)
    metrics, out = evaluate(cfg)
    from rich.console import Console

    from sumrl.evaluation.harness import format_table

    Console().print(format_table({metrics["system"]: metrics["metrics"]}, title=f"sumrl eval (n={metrics['n']})"))
    print(f"outputs: {out}")
    return 0


def evaluate(cfg: EvalConfig, *, model_and_tokenizer: tuple | None = None, progress: bool = True) -> tuple[dict, Path]:
    """Run one evaluation; returns (metrics.json content, output folder)."""
    from sumrl.evaluation.harness import aggregate_metrics, generate_predictions, score_rows, write_run
    from sumrl.utils.io import read_json

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.predictions:
        rows = load_prediction_rows(cfg.predictions)
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
    score_rows(rows, cleanup=cfg.cleanup, semantic=cfg.semantic, judges=cfg.judges, knowledge=cfg.knowledge)
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
    return read_json(out / "metrics.json"), out
