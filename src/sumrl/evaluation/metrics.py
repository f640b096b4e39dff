"""Per-example summary metrics: :func:`score_example` combines the reference-overlap metrics
(:mod:`sumrl.evaluation.rouge`), lengths, the source-overlap metrics
(:mod:`sumrl.evaluation.overlap`), repetition and fact precision into one flat dict;
:data:`METRIC_DOCS` says what each key means (the eval table and docs/metrics.md use it).
"""

from __future__ import annotations

from typing import Sequence

from sumrl.evaluation.facts import extract_facts
from sumrl.evaluation.overlap import (SourceIndex, copy_rate, fragment_stats, novel_ngram_ratio, repeated_ngram_rate,
                                      source_index)
from sumrl.evaluation.rouge import as_refs, length_adjusted_rouge, rouge, sentence_bleu
from sumrl.evaluation.text import words

__all__ = ["METRIC_DOCS", "length_stats", "score_example"]




def length_stats(prediction: str, references: "str | Sequence[str]", source: "str | SourceIndex") -> dict[str, float]:
    """Word counts (whitespace words).

    ``ref_words`` is the length of the FIRST reference (a fixed choice, so that the length
    target does not move with the system being scored). ``extra_words = pred - ref`` (can be
    negative); ``extra_words_pos = max(0, pred - ref)`` is the words beyond the reference, the
    seed paper's Table 1 quantity. ``compression_ratio = source_words / max(pred_words, 1)``:
    an empty prediction counts as one word so the ratio stays finite (and JSON-safe).
    """
    pred_words = len(words(prediction))
    ref_words = len(words(as_refs(references)[0]))
    src_words = source.n_words if isinstance(source, SourceIndex) else len(words(source))
    return {
        "pred_words": float(pred_words),
        "ref_words": float(ref_words),
        "extra_words": float(pred_words - ref_words),
        "extra_words_pos": float(max(0, pred_words - ref_words)),
        "compression_ratio": src_words / max(pred_words, 1),
    }


# =========================================================================== per example

#: One line per key of :func:`score_example`; the eval table and docs/metrics.md use it.
METRIC_DOCS: dict[str, str] = {}
for _t, _name in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("rougeLsum", "ROUGE-Lsum")):
    for _s, _what in (("p", "precision"), ("r", "recall"), ("f", "F1")):
        METRIC_DOCS[f"{_t}_{_s}"] = (
            f"{_name} {_what} (rouge-score compatible, Porter stemming, best-F1 reference"
            + ("; one sentence per line)" if _t == "rougeLsum" else ")")
        )
METRIC_DOCS.update(
    {
        "la_rouge1": "length-adjusted ROUGE-1 (seed paper; ng gold, np predicted words): R*ng/np if longer, P*np/ng if shorter, F1 if equal",
        "la_rouge2": "length-adjusted ROUGE-2 (same formula as la_rouge1)",
        "la_rougeL": "length-adjusted ROUGE-L (same formula as la_rouge1)",
        "bleu": "sacrebleu BLEU, 0-100 scale, all references (per example: sentence BLEU; aggregate: corpus BLEU)",
        "pred_words": "prediction length in whitespace words",
        "ref_words": "first reference length in whitespace words",
        "extra_words": "prediction words minus reference words (negative = shorter)",
        "extra_words_pos": "words beyond the reference length, max(0, extra_words) (seed paper Table 1)",
        "compression_ratio": "source words / prediction words (empty prediction counts as 1 word)",
        "novel_1": "fraction of summary unigrams not in the source",
        "novel_2": "fraction of summary bigrams not in the source",
        "novel_3": "fraction of summary trigrams not in the source",
        "coverage": "Grusky et al. extractive fragment coverage (share of words in copied fragments)",
        "density": "Grusky et al. extractive fragment density (mean squared fragment length per word)",
        "copy_rate": "fraction of summary words inside verbatim source copies of >= 8 words",
        "rep3": "fraction of summary trigrams repeating an earlier trigram of the summary",
        "cutoff": "1 if generation stopped without EOS (hit the length limit), else 0; absent if unknown",
        "fact_precision": "share of summary numbers/names found in the source (1 when there are none)",
        "hallucination_rate": "share of summary numbers/names NOT found in the source (0 when none)",
        "n_facts": "number of numbers and capitalised names in the summary",
        "n_unsupported_facts": "number of summary numbers/names not found in the source",
    }
)

def score_example(
    prediction: str,
    references: Sequence[str],
    source: "str | SourceIndex",
    finished: bool | None = None,
    copy_min_words: int = 8,
) -> dict[str, float]:
    """All per-example metrics as a flat ``{key: float}`` (keys and meanings: METRIC_DOCS).

    Keys that are undefined for this example are left out rather than set to NaN (which JSON
    cannot carry): the reference-based keys when ``references`` is empty, ``cutoff`` when
    ``finished`` is None. ``source`` may be the text (indexed once through the
    :func:`get_source_index` cache) or a prepared :class:`SourceIndex`.
    """
    idx = source_index(source)
    refs = [references] if isinstance(references, str) else list(references)
    out: dict[str, float] = {}
    if refs:
        out.update(rouge(prediction, refs))
        out.update(length_adjusted_rouge(prediction, refs))
        out["bleu"] = sentence_bleu(prediction, refs)
        out.update(length_stats(prediction, refs, idx))
    else:
        n = len(words(prediction))
        out["pred_words"] = float(n)
        out["compression_ratio"] = idx.n_words / max(n, 1)
    for n in (1, 2, 3):
        out[f"novel_{n}"] = novel_ngram_ratio(prediction, idx, n)
    out.update(fragment_stats(prediction, idx))
    out["copy_rate"] = copy_rate(prediction, idx, copy_min_words)
    out["rep3"] = repeated_ngram_rate(prediction, 3)
    if finished is not None:
        out["cutoff"] = 0.0 if finished else 1.0
    facts = extract_facts(prediction)
    n_bad = sum(1 for f in facts if not idx.facts.supports(f))
    out["n_facts"] = float(len(facts))
    out["n_unsupported_facts"] = float(n_bad)
    out["fact_precision"] = (len(facts) - n_bad) / len(facts) if facts else 1.0
    out["hallucination_rate"] = n_bad / len(facts) if facts else 0.0
    return out
