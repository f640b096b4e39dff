"""The numbers of a report: system roles, paired bootstrap tests, the extra-length table, and the
highlighted before/after examples. Pure Python + numpy (no HTML here, no matplotlib), so every
number in the report can be unit-tested on hand-made predictions.
"""

from __future__ import annotations

import html
import math
import random
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from sumrl.errors import SumrlError
from sumrl.evaluation.bootstrap import paired_bootstrap
from sumrl.evaluation.facts import FactIndex, unsupported_facts
from sumrl.evaluation.overlap import copy_spans, get_source_index
from sumrl.evaluation.text import words
from sumrl.report.runs import EvalRun

__all__ = [
    "PAIRED_METRICS",
    "HIGHER_IS_BETTER",
    "Roles",
    "assign_roles",
    "paired_tests",
    "extra_length_table",
    "Comparison",
    "compare",
    "highlight",
    "highlight_spans",
    "sample_ids",
    "quantile_ids",
    "excerpt",
]

#: Metrics of the paired tests (RL variant - baseline), when the rows carry them.
PAIRED_METRICS = [
    "rouge1_f", "rouge2_f", "rougeL_f", "la_rouge1", "la_rougeL", "bleu", "sim_ref", "pred_words",
    "extra_words_pos", "hallucination_rate", "fact_precision", "copy_rate", "rep3", "cutoff",
    "unsupported_sent_rate", "factual_support", "coherence_score",  # learned judges (sumrl eval --judges)
]

#: Direction of improvement, used to colour significant deltas and bold the best system. Metrics
#: absent here (lengths, copying, novelty) have no "better" direction: shorter is not always
#: better and some copying is expected from a summary of a scientific paper.
HIGHER_IS_BETTER: dict[str, bool] = {
    **{f"rouge{t}_{s}": True for t in ("1", "2", "L", "Lsum") for s in ("p", "r", "f")},
    "la_rouge1": True, "la_rouge2": True, "la_rougeL": True, "bleu": True, "sim_ref": True,
    "fact_precision": True,
    "extra_words_pos": False, "hallucination_rate": False, "n_unsupported_facts": False, "rep3": False,
    "cutoff": False, "unsupported_sent_rate": False, "factual_support": True, "coherence_score": True,
}


@dataclass
class Roles:
    """Which systems are baselines and which are RL variants (everything else is "other")."""

    baselines: list[str]
    rl: list[str]
    rule: str  # a sentence for the report: how the roles were chosen

    def role(self, system: str) -> str:
        if system in self.baselines:
            return "baseline"
        if system in self.rl:
            return "RL"
        return "base" if system.lower().startswith("base") else "other"


def assign_roles(systems: Sequence[str], baselines: Iterable[str] | None = None,
                 rl: Iterable[str] | None = None) -> Roles:
    """The default rule, overridable per side:

    * baselines: ``baselines`` if given, else every system whose name starts with ``sft``;
    * RL variants: ``rl`` if given, else every remaining system whose name does not start with
      ``base`` (base/zero-shot models are context, not something RL is tested against).

    Names are matched case-insensitively for the prefix rule and exactly for explicit lists; an
    explicit name that is not a system is an error (a typo must not silently drop a test).
    """
    systems = list(systems)
    known = set(systems)
    rules = []
    if baselines:
        base_list = list(dict.fromkeys(baselines))
        unknown = [b for b in base_list if b not in known]
        if unknown:
            raise SumrlError(f"--baseline {', '.join(unknown)}: no such system (systems: {', '.join(systems)})")
        rules.append("baselines given with --baseline")
    else:
        base_list = [s for s in systems if s.lower().startswith("sft")]
        rules.append("baselines = systems whose name starts with 'sft'")
    if rl:
        rl_list = list(dict.fromkeys(rl))
        unknown = [r for r in rl_list if r not in known]
        if unknown:
            raise SumrlError(f"--rl {', '.join(unknown)}: no such system (systems: {', '.join(systems)})")
        clash = [r for r in rl_list if r in base_list]
        if clash:
            raise SumrlError(f"{', '.join(clash)}: cannot be both a baseline and an RL variant")
        rules.append("RL variants given with --rl")
    else:
        rl_list = [s for s in systems if s not in base_list and not s.lower().startswith("base")]
        rules.append("RL variants = all other systems whose name does not start with 'base'")
    return Roles(baselines=base_list, rl=rl_list, rule="; ".join(rules) + ".")


def _values(run: EvalRun, ids: Sequence[str], metric: str) -> list[float]:
    return [run.by_id[i]["metrics"].get(metric, math.nan) for i in ids]


def paired_tests(runs: Sequence[EvalRun], roles: Roles, *, metrics: Sequence[str] = PAIRED_METRICS,
                 n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Paired bootstrap of every RL variant against every baseline.

    Examples are paired by ``id``: only ids present in both run folders count (``n`` says how
    many; ``n_unpaired`` how many were dropped). For each metric present in both runs' rows the
    per-example differences ``rl - baseline`` are resampled (:func:`paired_bootstrap`), giving
    the observed mean ``delta``, its 95% percentile CI and a two-sided bootstrap p-value.
    Returns one dict per (RL variant, baseline) with a ``tests`` list.
    """
    by_name = {r.system: r for r in runs}
    out = []
    for rl_name in roles.rl:
        for base_name in roles.baselines:
            a, b = by_name[rl_name], by_name[base_name]
            ids = [i for i in a.by_id if i in b.by_id]  # a's order: stable and reproducible
            n_unpaired = len(a.by_id) + len(b.by_id) - 2 * len(ids)
            tests = []
            for m in metrics:
                have_a = any(m in a.by_id[i]["metrics"] for i in ids)
                have_b = any(m in b.by_id[i]["metrics"] for i in ids)
                if not ids or not (have_a and have_b):
                    continue
                va, vb = _values(a, ids, m), _values(b, ids, m)
                res = paired_bootstrap(va, vb, n_resamples=n_resamples, seed=seed)
                # Means over the pairs actually compared (both values defined), so that
                # mean_rl - mean_baseline == delta even when some metric values are missing.
                ok = [(x, y) for x, y in zip(va, vb) if not (math.isnan(x) or math.isnan(y))]
                res["mean_rl"] = statistics.fmean(x for x, _ in ok) if ok else math.nan
                res["mean_baseline"] = statistics.fmean(y for _, y in ok) if ok else math.nan
                res["n"] = len(ok)
                tests.append({"metric": m, **res, "better": _better(m, res)})
            out.append({"rl": rl_name, "baseline": base_name, "n": len(ids), "n_unpaired": n_unpaired,
                        "tests": tests})
    return out


def _better(metric: str, res: dict, alpha: float = 0.05) -> str | None:
    """"better"/"worse" when the difference is significant and the metric has a direction."""
    direction = HIGHER_IS_BETTER.get(metric)
    p, d = res.get("p_value"), res.get("delta")
    if direction is None or p is None or d is None or math.isnan(p) or p >= alpha or d == 0:
        return None
    return "better" if (d > 0) == direction else "worse"


def extra_length_table(runs: Sequence[EvalRun]) -> list[dict]:
    """The seed paper's Table 1: words beyond the reference, per system.

    Lengths are whitespace words (:func:`sumrl.evaluation.text.words`) of the prediction and of
    the FIRST reference, as in ``sumrl eval``'s ``length_stats``. ``extra`` is
    ``max(0, pred - ref)`` per output; ``share_longer`` is the fraction of outputs with
    ``pred > ref``; ``mean_abs_diff`` the mean ``|pred - ref|`` (too short counts too);
    ``min_ref_words`` / ``max_ref_words`` the range of the reference lengths. Recomputed from the texts (not read from the metric rows) so the table also
    works for predictions scored by an older ``sumrl eval``. Rows without a reference are skipped.
    """
    table = []
    for run in runs:
        extra, pred_len, ref_len, longer = [], [], [], 0
        for r in run.rows:
            if not r["references"]:
                continue
            p, q = len(words(r["prediction"])), len(words(r["references"][0]))
            pred_len.append(p)
            ref_len.append(q)
            extra.append(max(0, p - q))
            longer += p > q
        n = len(extra)
        table.append({
            "system": run.system, "n": n,
            "mean_extra": statistics.fmean(extra) if n else math.nan,
            "median_extra": float(statistics.median(extra)) if n else math.nan,
            "share_longer": longer / n if n else math.nan,
            "mean_pred_words": statistics.fmean(pred_len) if n else math.nan,
            "mean_ref_words": statistics.fmean(ref_len) if n else math.nan,
            "mean_abs_diff": statistics.fmean(abs(p - q) for p, q in zip(pred_len, ref_len)) if n else math.nan,
            "min_ref_words": min(ref_len) if n else math.nan,
            "max_ref_words": max(ref_len) if n else math.nan,
        })
    return table


@dataclass
class Comparison:
    """What both renderings of a report (HTML and Markdown) show, computed once."""

    roles: Roles
    tests: list[dict]  # paired_tests()
    extra: list[dict]  # extra_length_table()
    n_bootstrap: int


def compare(runs: Sequence[EvalRun], baselines: Iterable[str] | None = None, rl: Iterable[str] | None = None, *,
            n_bootstrap: int = 1000, seed: int = 0) -> Comparison:
    """Roles, paired bootstrap tests and the extra-length table of ``runs``."""
    roles = assign_roles([r.system for r in runs], baselines, rl)
    return Comparison(roles=roles, tests=paired_tests(runs, roles, n_resamples=n_bootstrap, seed=seed),
                      extra=extra_length_table(runs), n_bootstrap=n_bootstrap)


# --------------------------------------------------------------------------- highlighting


def highlight_spans(summary: str, source: str, *, copy_min_words: int = 8,
                    fact_index: FactIndex | None = None) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` character spans of ``summary`` to mark: ``"hall"`` for a number or
    name not found in the FULL source (:func:`unsupported_facts`), ``"copy"`` for a verbatim copy
    of ``copy_min_words`` or more source words (:func:`copy_spans`)."""
    index = fact_index or FactIndex(source)
    spans = [(f.start, f.end, "hall") for f in unsupported_facts(summary, index)]
    spans += [(s, e, "copy") for s, e in copy_spans(summary, get_source_index(source), copy_min_words)]
    return sorted(spans)


def highlight(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """HTML of ``text`` (escaped) with ``<mark class="...">`` around the spans.

    Spans may overlap (a hallucinated name inside a copied stretch): the text is cut at every
    span boundary and each piece gets the classes of all spans covering it, so the markup is
    always well nested. Every piece of text goes through ``html.escape``.
    """
    cuts = {0, len(text)}
    for s, e, _ in spans:
        cuts.update((max(0, min(s, len(text))), max(0, min(e, len(text)))))
    bounds = sorted(cuts)
    out = []
    for s, e in zip(bounds, bounds[1:]):
        piece = html.escape(text[s:e])
        kinds = sorted({k for a, b, k in spans if a <= s and e <= b and a < b})
        if kinds:
            cls = " ".join(f"m-{k}" for k in kinds)
            out.append(f'<mark class="{cls}">{piece}</mark>')
        else:
            out.append(piece)
    return "".join(out)


def sample_ids(runs: Sequence[EvalRun], k: int, seed: int = 0) -> list[str]:
    """``k`` example ids drawn with ``random.Random(seed)`` from the ids that every run has (so
    each example shows every system), in the first run's order. Falls back to the first run's ids
    when no id is shared by all runs."""
    if k <= 0:
        return []
    first = list(runs[0].by_id)
    common = [i for i in first if all(i in r.by_id for r in runs[1:])] or first
    if len(common) <= k:
        return common
    chosen = set(random.Random(seed).sample(common, k))
    return [i for i in common if i in chosen]


def quantile_ids(runs: Sequence[EvalRun], rl: Sequence[str], baseline: str, metric: str = "la_rougeL",
                 quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> tuple[list[str], str]:
    """Before/after examples chosen by a rule stated in advance, not by looking at them: the
    documents at the given quantiles of the per-document difference "RL minus ``baseline``" in
    ``metric`` (averaged over the ``rl`` systems), among the ids every run has.

    The differences are sorted ascending (ties by id, so the choice is reproducible) and the
    document at index ``round(q * (n - 1))`` is taken for each quantile ``q`` (duplicates once).
    Returns the ids (in quantile order) and the rule as a sentence for the report. Documents
    where a value is missing are left out of the ranking."""
    by_name = {r.system: r for r in runs}
    missing = [s for s in [*rl, baseline] if s not in by_name]
    if missing or not rl:
        raise SumrlError(f"example rule: no such system(s) {', '.join(missing) or '(no RL system)'} "
                         f"(systems: {', '.join(by_name)})")
    first = list(runs[0].by_id)
    common = [i for i in first if all(i in r.by_id for r in runs[1:])]
    diffs = []
    for i in common:
        base = by_name[baseline].by_id[i]["metrics"].get(metric, math.nan)
        vals = [by_name[s].by_id[i]["metrics"].get(metric, math.nan) for s in rl]
        d = statistics.fmean(vals) - base if vals else math.nan
        if not math.isnan(d):
            diffs.append((d, i))
    diffs.sort()
    ids: list[str] = []
    for q in quantiles:
        if diffs:
            i = diffs[round(q * (len(diffs) - 1))][1]
            if i not in ids:
                ids.append(i)
    qs = "/".join(f"{round(q * 100)}th" for q in quantiles)
    who = rl[0] if len(rl) == 1 else "the mean of " + ", ".join(rl)
    rule = (f"Chosen by a rule fixed in advance: the test documents at the {qs} percentile of the per-document "
            f"{metric} difference ({who} minus {baseline}), among the {len(diffs)} documents every system has.")
    return ids, rule


def excerpt(document: str, n_words: int) -> tuple[str, bool]:
    """The first ``n_words`` whitespace words of ``document`` (original spacing kept) and whether
    it was cut."""
    if n_words <= 0:
        return "", bool(document.strip())
    count, i, in_word = 0, 0, False
    for i, ch in enumerate(document):
        if ch.isspace():
            in_word = False
        elif not in_word:
            in_word = True
            count += 1
            if count > n_words:
                return document[:i].rstrip(), True
    return document, False
