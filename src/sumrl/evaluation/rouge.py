"""Reference-overlap metrics: ROUGE, length-adjusted ROUGE (the seed paper's) and BLEU.

ROUGE is our own implementation because the RL reward calls it on many summaries per step;
it reproduces Google's ``rouge-score`` package (``RougeScorer([...], use_stemmer=True)``)
exactly, which ``tests/test_metrics.py`` checks on hundreds of text pairs:

* tokenisation = ``rouge_score.tokenize.tokenize``: lowercase, every run of characters other
  than ``[a-z0-9]`` is a separator, NLTK's Porter stemmer on tokens longer than 3 characters
  (cached with ``functools.lru_cache``: real text repeats words constantly);
* ROUGE-N from clipped n-gram counts, ROUGE-L from the LCS length, ROUGE-Lsum from the
  summary-level union LCS of ROUGE 1.5.5 (sentences = lines, with the same double-counting
  guard and the same choice of *which* LCS is used for the union);
* multi-reference = for each ROUGE type independently, the reference with the highest F1, first
  one on ties (``RougeScorer.score_multi`` uses ``np.argmax``).

LCS runs bit-parallel (Allison & Dix 1986 / Hyyro 2004): a row of the DP table is a Python
integer, so one reference token costs a handful of big-int operations instead of a Python loop
over the candidate. For ROUGE-Lsum the backtracking needs table values, which are recovered
from the stored row bit-vectors with popcounts.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from typing import Iterable, Sequence

from sumrl.evaluation.text import sentences, words

__all__ = ["ROUGE_TYPES", "rouge_tokenize", "rouge", "length_adjusted_rouge", "as_refs", "corpus_bleu",
           "sentence_bleu"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# =========================================================================== ROUGE

_ALNUM_RUN_RE = re.compile(r"[a-z0-9]+")
_VALID_TOKEN_RE = re.compile(r"^[a-z0-9]+$")


@functools.lru_cache(maxsize=1)
def _porter():
    # The very stemmer rouge-score's DefaultTokenizer uses (NLTK, default NLTK_EXTENSIONS mode):
    # a reimplementation could differ on rare words and break exact agreement.
    from nltk.stem import porter

    return porter.PorterStemmer()


@functools.lru_cache(maxsize=1 << 18)
def _stem(token: str) -> str:
    return _porter().stem(token)


def rouge_tokenize(text: str, use_stemmer: bool = True) -> list[str]:
    """Tokens exactly as ``rouge_score.tokenize.tokenize`` produces them.

    rouge-score replaces ``[^a-z0-9]+`` by a space in the lowercased text and splits on
    whitespace, i.e. the tokens are the maximal ``[a-z0-9]`` runs; ``findall`` gets them in one
    pass.
    """
    tokens = _ALNUM_RUN_RE.findall(text.lower())
    if use_stemmer:
        tokens = [_stem(t) if len(t) > 3 else t for t in tokens]
        # rouge-score re-validates after stemming; kept so odd stemmer output behaves the same.
        tokens = [t for t in tokens if _VALID_TOKEN_RE.match(t)]
    return tokens


def _fmeasure(p: float, r: float) -> float:
    # Same expression as rouge_score.scoring.fmeasure, so results agree to the last bit.
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _score_ngrams(ref: Counter, pred: Counter) -> tuple[float, float, float]:
    overlap = sum(min(c, pred[g]) for g, c in ref.items()) if len(ref) <= len(pred) else sum(
        min(c, ref[g]) for g, c in pred.items()
    )
    p = overlap / max(sum(pred.values()), 1)
    r = overlap / max(sum(ref.values()), 1)
    return p, r, _fmeasure(p, r)


def _match_masks(tokens: Sequence[str]) -> dict[str, int]:
    """token -> bit mask of its positions in ``tokens`` (bit j = position j)."""
    masks: dict[str, int] = {}
    for j, t in enumerate(tokens):
        masks[t] = masks.get(t, 0) | (1 << j)
    return masks


def _lcs_rows(ref: Sequence[str], masks: dict[str, int], n_can: int) -> list[int]:
    """Bit-vector rows V_0..V_m of the LCS DP of ``ref`` (rows) against a candidate (columns).

    Allison-Dix recurrence: V_0 = all ones; V_i = (V + U) | (V - U) with U = V & M[ref_i]
    (V - U == V & ~M because U's bits are a subset of V's). A *zero* bit j of V_i marks a
    column where the DP value increases, so T[i][j] = j - popcount(V_i & (2^j - 1)) and
    LCS = n_can - popcount(V_m).
    """
    full = (1 << n_can) - 1
    v = full
    rows = [v]
    for t in ref:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
        rows.append(v)
    return rows


def _lcs_length(ref: Sequence[str], masks: dict[str, int], n_can: int) -> int:
    full = (1 << n_can) - 1
    v = full
    for t in ref:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return n_can - v.bit_count()


def _lcs_ref_indices(ref: Sequence[str], can: Sequence[str], masks: dict[str, int]) -> list[int]:
    """Reference positions of the LCS that rouge-score's ``lcs_ind`` returns.

    Same walk as ``_backtrack_norec``: take a match whenever the tokens are equal, else move left
    iff T[i][j-1] > T[i-1][j] (ties move up). The union LCS of ROUGE-Lsum depends on which LCS
    is chosen, so the tie-break must be identical, not just the length.
    """
    rows = _lcs_rows(ref, masks, len(can))
    i, j = len(ref), len(can)
    out = []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            out.append(i - 1)
            i -= 1
            j -= 1
        else:
            left = (j - 1) - (rows[i] & ((1 << (j - 1)) - 1)).bit_count()  # T[i][j-1]
            up = j - (rows[i - 1] & ((1 << j) - 1)).bit_count()  # T[i-1][j]
            if left > up:
                j -= 1
            else:
                i -= 1
    return out


def _summary_level_lcs(ref_sents: list[list[str]], can_sents: list[list[str]], can_masks: list[dict]) -> tuple[float, float, float]:
    """ROUGE-Lsum: ROUGE 1.5.5's union LCS with the guard against double-counting tokens."""
    if not ref_sents or not can_sents:
        return 0.0, 0.0, 0.0
    m = sum(map(len, ref_sents))
    n = sum(map(len, can_sents))
    if not n or not m:
        return 0.0, 0.0, 0.0
    cnt_r: Counter = Counter()
    cnt_c: Counter = Counter()
    for s in ref_sents:
        cnt_r.update(s)
    for s in can_sents:
        cnt_c.update(s)
    hits = 0
    for r in ref_sents:
        union: set[int] = set()
        for c, cm in zip(can_sents, can_masks):
            union.update(_lcs_ref_indices(r, c, cm))
        for i in sorted(union):
            t = r[i]
            if cnt_c[t] > 0 and cnt_r[t] > 0:
                hits += 1
                cnt_c[t] -= 1
                cnt_r[t] -= 1
    p = hits / n
    r_ = hits / m
    return p, r_, _fmeasure(p, r_)


def _lsum_text(text: str, split_sentences: bool) -> str:
    return "\n".join(sentences(text)) if split_sentences else text


class _RougeText:
    """A text prepared once for ROUGE (tokens, n-gram counts, LCS masks, Lsum sentences)."""

    __slots__ = ("tokens", "uni", "bi", "masks", "sents", "sent_masks", "n_words")

    def __init__(self, text: str, use_stemmer: bool, split_lsum: bool):
        self.tokens = rouge_tokenize(text, use_stemmer)
        self.uni = _ngrams(self.tokens, 1)
        self.bi = _ngrams(self.tokens, 2)
        self.masks = _match_masks(self.tokens)
        # rouge-score's get_sents: split on "\n", drop empty strings (whitespace-only lines stay
        # and tokenise to nothing, which only matters through the sums below -- i.e. not at all).
        self.sents = [rouge_tokenize(s, use_stemmer) for s in _lsum_text(text, split_lsum).split("\n") if len(s)]
        self.sent_masks = [_match_masks(s) for s in self.sents]
        self.n_words = len(words(text))


# Many rewards score several samples against the same references: cache the prepared texts.
@functools.lru_cache(maxsize=4096)
def _prepare(text: str, use_stemmer: bool, split_lsum: bool) -> _RougeText:
    return _RougeText(text, use_stemmer, split_lsum)


def _rouge_pair(pred: _RougeText, ref: _RougeText, lsum: bool = True) -> dict[str, tuple[float, float, float]]:
    out = {
        "rouge1": _score_ngrams(ref.uni, pred.uni),
        "rouge2": _score_ngrams(ref.bi, pred.bi),
    }
    if not ref.tokens or not pred.tokens:
        out["rougeL"] = (0.0, 0.0, 0.0)
    else:
        lcs = _lcs_length(ref.tokens, pred.masks, len(pred.tokens))
        p = lcs / len(pred.tokens)
        r = lcs / len(ref.tokens)
        out["rougeL"] = (p, r, _fmeasure(p, r))
    if lsum:  # the union LCS is the costly part; length-adjusted ROUGE does not need it
        out["rougeLsum"] = _summary_level_lcs(ref.sents, pred.sents, pred.sent_masks)
    return out


def as_refs(references: "str | Iterable[str]") -> list[str]:
    """One reference or several, as a non-empty list (ValueError when there is none)."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("ROUGE/BLEU need at least one reference")
    return refs


def rouge(
    prediction: str,
    references: "str | Sequence[str]",
    use_stemmer: bool = True,
    split_sentences_for_lsum: bool = True,
) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum precision, recall and F1, identical to Google's ``rouge-score``.

    Returns ``rouge1_p, rouge1_r, rouge1_f, rouge2_*, rougeL_*, rougeLsum_*`` (0..1). With
    several references each ROUGE type independently takes the reference with the best F1 (the
    first on ties), exactly like ``RougeScorer.score_multi``.

    ROUGE-Lsum treats each *line* as a sentence (rouge-score's convention; text without a
    newline is a single sentence, which makes Lsum equal to L). With
    ``split_sentences_for_lsum=True`` (default, the standard CNN/DailyMail convention) the
    prediction and references are first split with :func:`sumrl.evaluation.text.sentences` and
    joined one sentence per line; it equals ``rouge-score`` fed those newline-joined texts.
    With ``False`` the texts are used as given. ROUGE-1/2/L ignore line breaks either way.
    """
    pred = _prepare(prediction, use_stemmer, split_sentences_for_lsum)
    best: dict[str, tuple[float, float, float]] = {}
    for ref_text in as_refs(references):
        scores = _rouge_pair(pred, _prepare(ref_text, use_stemmer, split_sentences_for_lsum))
        for k, s in scores.items():
            if k not in best or s[2] > best[k][2]:  # strict: first reference wins ties
                best[k] = s
    out = {}
    for k in ROUGE_TYPES:
        p, r, f = best[k]
        out[f"{k}_p"], out[f"{k}_r"], out[f"{k}_f"] = float(p), float(r), float(f)
    return out


# =========================================================================== length-adjusted ROUGE


def length_adjusted_rouge(
    prediction: str, references: "str | Sequence[str]", use_stemmer: bool = True
) -> dict[str, float]:
    """Length-adjusted ROUGE of the seed paper, for rouge1/2/L (keys ``la_rouge1/2/L``).

    With ng = whitespace words of the *gold* reference and np = whitespace words of the
    *predicted* summary::

        la = recall    * ng / np   if np > ng  (prediction longer: recall scaled down)
        la = precision * np / ng   if np < ng  (prediction shorter: precision scaled down)
        la = F1                    if np == ng (our choice: P and R play symmetric roles then)

    So a summary cannot raise its score by padding (recall alone would reward length) nor by
    being terse (precision alone would reward brevity): the ratio <= 1 always penalises the
    length mismatch, and 0 <= la <= 1.

    Degenerate lengths: np == 0 or ng == 0 (with the other non-zero) gives 0.0 -- nothing
    generated, or nothing to match -- instead of a division by zero; precision/recall are
    rouge-score's values (stemmed ROUGE tokens), only the length ratio uses whitespace words.
    Several references: the maximum over references, per type. Nothing is capped.
    """
    n_pred = len(words(prediction))
    pred = _prepare(prediction, use_stemmer, False)
    best = {"la_rouge1": -math.inf, "la_rouge2": -math.inf, "la_rougeL": -math.inf}
    for ref_text in as_refs(references):
        ref = _prepare(ref_text, use_stemmer, False)
        n_gold = ref.n_words
        scores = _rouge_pair(pred, ref, lsum=False)
        for key, typ in (("la_rouge1", "rouge1"), ("la_rouge2", "rouge2"), ("la_rougeL", "rougeL")):
            p, r, f = scores[typ]
            if n_pred == n_gold:
                v = f
            elif n_pred == 0 or n_gold == 0:
                v = 0.0
            elif n_pred > n_gold:
                v = r * n_gold / n_pred
            else:
                v = p * n_pred / n_gold
            best[key] = max(best[key], float(v))
    return best


# =========================================================================== BLEU


@functools.lru_cache(maxsize=1)
def _sentence_bleu_metric():
    from sacrebleu.metrics import BLEU

    # sacrebleu.sentence_bleu's defaults: exp smoothing, effective order.
    return BLEU(effective_order=True)


def sentence_bleu(prediction: str, references: "str | Sequence[str]") -> float:
    """sacrebleu sentence BLEU (0..100 scale, sacrebleu's defaults: 13a tokeniser, exp smoothing,
    effective order), equal to ``sacrebleu.sentence_bleu(prediction, references).score``."""
    return float(_sentence_bleu_metric().sentence_score(prediction, as_refs(references)).score)


def corpus_bleu(predictions: Sequence[str], references_lists: Sequence["str | Sequence[str]"]) -> float:
    """sacrebleu corpus BLEU (0..100) with a possibly different number of references per example.

    sacrebleu wants reference *streams* (stream k = the k-th reference of every example), all
    as long as ``predictions``; an example with fewer references gets ``None`` in the remaining
    streams, which sacrebleu drops per segment (``_cache_references``). Every example needs at
    least one reference.
    """
    refs = [as_refs(r) for r in references_lists]
    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} reference lists")
    if not refs:
        raise ValueError("corpus_bleu needs at least one example")
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return float(BLEU().corpus_score(list(predictions), streams).score)
