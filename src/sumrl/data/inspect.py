"""``sumrl data validate`` and ``sumrl data show``: their configs and jobs (the CLI only prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sumrl.config import opt
from sumrl.data.options import DataSourceConfig, load_source
from sumrl.errors import ConfigError


@dataclass
class DataValidateConfig(DataSourceConfig):
    """``sumrl data validate``."""

    require_summary: bool = opt(True, "every row must have a reference summary (--no-require-summary for "
                                      "documents-only input to `sumrl summarize`)")


@dataclass
class DataShowConfig(DataSourceConfig):
    """``sumrl data show``."""

    n: int = opt(3, "number of examples to print")
    max_chars: int = opt(300, "truncate document, query and references to this many characters")

    def validate(self) -> None:
        super().validate()
        if self.n < 1 or self.max_chars < 1:
            raise ConfigError("--n and --max-chars must be at least 1")


def validation_report(cfg: DataValidateConfig) -> list[str]:
    """The lines ``sumrl data validate`` prints: OK with the counts, the first 20 rows skipped under
    --skip-invalid, and one warning per OCR-garbage document. A file that does not load raises
    its one-line DataError instead."""
    examples, n_skipped, problems = load_source(cfg, require_summary=cfg.require_summary)
    splits: dict[str, int] = {}
    for ex in examples:
        splits[ex.meta["split"]] = splits.get(ex.meta["split"], 0) + 1
    split_text = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    lines = [f"OK {cfg.data}: {len(examples)} examples ({split_text}), "
             f"{sum(len(ex.references) for ex in examples)} references, "
             f"{sum(1 for ex in examples if ex.query)} with a query, {n_skipped} invalid rows skipped"]
    lines += [f"skipped: {p}" for p in problems[:20]]
    if len(problems) > 20:
        lines.append(f"... and {len(problems) - 20} more skipped rows")
    return lines + ocr_warnings(cfg, examples)


def ocr_warnings(cfg: DataSourceConfig, examples: list) -> list[str]:
    """One warning line per document whose text is OCR garbage (sumrl.data.quality), naming the
    file, line and field. A warning, not an error: the rule is calibrated on scientific papers,
    and the user decides whether such a document belongs in their data."""
    from sumrl.data.builtin import is_builtin
    from sumrl.data.quality import OCR_GARBAGE_MAX_SHARE, is_ocr_garbage, mangled_share

    bad = [ex for ex in examples if is_ocr_garbage(ex.document)]
    if not bad:
        return []
    lines: dict[str, int] = {}
    if not is_builtin(cfg.data):
        from sumrl.data.loaders import load_examples

        # line numbers of the rows (the split selection above drops them); only when there is
        # something to warn about, so a clean file is read once
        lines = load_examples(Path(cfg.data), fields=cfg.fields(), skip_invalid=True, require_summary=False,
                              split=cfg.split if Path(cfg.data).is_dir() else None).lines
    out = []
    for ex in bad:
        where = f"{cfg.data}, line {lines[ex.id]}" if ex.id in lines else f"{cfg.data}, id {ex.id}"
        out.append(f"warning: {where}, field '{cfg.document_field}': text looks like OCR garbage "
                   f"({mangled_share(ex.document):.0%} of its words are mangled, more than "
                   f"{OCR_GARBAGE_MAX_SHARE:.1%}; docs/data.md)")
    return out


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split()) if len(text) > n else text
    return text if len(text) <= n else text[:n].rstrip() + f" ... [{len(text.split()):,} words]"


def show_lines(cfg: DataShowConfig) -> list[str]:
    """The lines ``sumrl data show`` prints: the first ``cfg.n`` examples, each field cut to
    ``cfg.max_chars`` characters."""
    examples, _, _ = load_source(cfg, require_summary=False)
    out = []
    for ex in examples[:cfg.n]:
        out.append(f"== {ex.id} (split {ex.meta.get('split', '?')})")
        if ex.query:
            out.append(f"query: {_cut(ex.query, cfg.max_chars)}")
        out.append(f"document: {_cut(ex.document, cfg.max_chars)}")
        out += [f"reference {i}: {_cut(ref, cfg.max_chars)}" for i, ref in enumerate(ex.references, start=1)]
        out.append("")
    out.append(f"({min(cfg.n, len(examples))} of {len(examples)} examples shown)")
    return out
