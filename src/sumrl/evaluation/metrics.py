"""Text-level summary metrics (no models): ROUGE, length-adjusted ROUGE, BLEU, lengths,
novelty/copying against the source, repetition, fact precision, and :func:`score_example`.

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

Source-side metrics take either the source text or a :class:`SourceIndex`; when given text they
go through :func:`get_source_index`, an LRU cache, so scoring many summaries of one document
tokenises and indexes that document once.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from typing import Iterable, Sequence

from sumrl.evaluation.facts import FactIndex, extract_facts
from sumrl.evaluation.text import sentences, word_spans, words

__all__ = [
    "METRIC_DOCS",
    "ROUGE_TYPES",
    "SourceIndex",
    "get_source_index",
    "rouge_tokenize",
    "rouge",
    "length_adjusted_rouge",
    "corpus_bleu",
    "sentence_bleu",
    "length_stats",
    "novel_ngram_ratio",
    "extractive_fragments",
    "fragment_stats",
    "copy_spans",
    "copy_rate",
    "repeated_ngram_rate",
    "repeated_spans",
    "score_example",
]

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


def _as_refs(references: "str | Iterable[str]") -> list[str]:
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
    for ref_text in _as_refs(references):
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
    for ref_text in _as_refs(references):
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
    return float(_sentence_bleu_metric().sentence_score(prediction, _as_refs(references)).score)


def corpus_bleu(predictions: Sequence[str], references_lists: Sequence["str | Sequence[str]"]) -> float:
    """sacrebleu corpus BLEU (0..100) with a possibly different number of references per example.

    sacrebleu wants reference *streams* (stream k = the k-th reference of every example), all
    as long as ``predictions``; an example with fewer references gets ``None`` in the remaining
    streams, which sacrebleu drops per segment (``_cache_references``). Every example needs at
    least one reference.
    """
    refs = [_as_refs(r) for r in references_lists]
    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} reference lists")
    if not refs:
        raise ValueError("corpus_bleu needs at least one example")
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return float(BLEU().corpus_score(list(predictions), streams).score)


# =========================================================================== length


def length_stats(prediction: str, references: "str | Sequence[str]", source: "str | SourceIndex") -> dict[str, float]:
    """Word counts (whitespace words).

    ``ref_words`` is the length of the FIRST reference (a fixed choice, so that the length
    target does not move with the system being scored). ``extra_words = pred - ref`` (can be
    negative); ``extra_words_pos = max(0, pred - ref)`` is the words beyond the reference, the
    seed paper's Table 1 quantity. ``compression_ratio = source_words / max(pred_words, 1)``:
    an empty prediction counts as one word so the ratio stays finite (and JSON-safe).
    """
    pred_words = len(words(prediction))
    ref_words = len(words(_as_refs(references)[0]))
    src_words = source.n_words if isinstance(source, SourceIndex) else len(words(source))
    return {
        "pred_words": float(pred_words),
        "ref_words": float(ref_words),
        "extra_words": float(pred_words - ref_words),
        "extra_words_pos": float(max(0, pred_words - ref_words)),
        "compression_ratio": src_words / max(pred_words, 1),
    }


# =========================================================================== source index / copying

_EDGE_PUNCT_RE = re.compile(r"^[\W_]+|[\W_]+$")


def _norm_word(w: str) -> str:
    """Lowercase, punctuation stripped at both ends; a word of only punctuation stays as is."""
    lw = w.lower()
    return _EDGE_PUNCT_RE.sub("", lw) or lw


def norm_tokens(text: str) -> list[str]:
    """One normalised token per whitespace word (aligned with :func:`words`/:func:`word_spans`)."""
    return [_norm_word(w) for w in text.split()]


class SourceIndex:
    """A source document indexed once for the copy/novelty/fact metrics of many summaries.

    Holds the normalised tokens, token -> sorted positions (for extractive fragments), lazily
    built n-gram sets (novelty, copy spans) and a :class:`FactIndex` (fact precision).
    """

    def __init__(self, source: str):
        self.text = source
        self.tokens = norm_tokens(source)
        self.n_words = len(self.tokens)
        positions: dict[str, list[int]] = {}
        for i, t in enumerate(self.tokens):
            positions.setdefault(t, []).append(i)
        self.positions = positions
        self._ngram_sets: dict[int, frozenset] = {}
        self._facts: FactIndex | None = None

    def ngrams(self, n: int) -> frozenset:
        """Set of the source's n-grams (tuples of normalised tokens), built on first use."""
        s = self._ngram_sets.get(n)
        if s is None:
            t = self.tokens
            s = frozenset(tuple(t[i : i + n]) for i in range(len(t) - n + 1))
            self._ngram_sets[n] = s
        return s

    @property
    def facts(self) -> FactIndex:
        if self._facts is None:
            self._facts = FactIndex(self.text)
        return self._facts


@functools.lru_cache(maxsize=16)
def get_source_index(source: str) -> SourceIndex:
    """The :class:`SourceIndex` of ``source``, cached (LRU, 16 documents) by text."""
    return SourceIndex(source)


def _index(source: "str | SourceIndex") -> SourceIndex:
    return source if isinstance(source, SourceIndex) else get_source_index(source)


def novel_ngram_ratio(summary: str, source: "str | SourceIndex", n: int) -> float:
    """Fraction of the summary's n-gram *occurrences* absent from the source (0 if none).

    Tokens are whitespace words, lowercased, with leading/trailing punctuation removed.
    """
    toks = norm_tokens(summary)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    src = _index(source).ngrams(n)
    return sum(1 for g in grams if g not in src) / len(grams)


def extractive_fragments(summary: str, source: "str | SourceIndex") -> list[tuple[int, int]]:
    """Grusky et al. (2018) greedy extractive fragments: ``(start_word, length)`` in the summary.

    Same procedure as the Newsroom reference code (``Fragments._match``): at summary position i,
    scan the source left to right; at each source position matching token i, extend the match,
    keep the longest, and resume the scan *after* the matched stretch; then jump i past the best
    fragment (or by one word if none). The scan is sped up by visiting only the source positions
    of token i (a pre-built index) -- the visited positions and results are identical.
    Indices are whitespace-word indices of ``summary``.
    """
    idx = _index(source)
    a, b = norm_tokens(summary), idx.tokens
    la, lb = len(a), len(b)
    out = []
    i = 0
    while i < la:
        best_len = 0
        b_next = 0  # the reference scan's b_start: positions before it are skipped
        for p in idx.positions.get(a[i], ()):
            if p < b_next:
                continue
            k = 0
            while i + k < la and p + k < lb and a[i + k] == b[p + k]:
                k += 1
            if k > best_len:
                best_len = k
            b_next = p + k
        if best_len:
            out.append((i, best_len))
            i += best_len
        else:
            i += 1
    return out


def fragment_stats(summary: str, source: "str | SourceIndex") -> dict[str, float]:
    """Grusky et al. (2018) ``coverage`` = sum|f| / |S| and ``density`` = sum|f|^2 / |S|."""
    n = len(words(summary))
    if n == 0:
        return {"coverage": 0.0, "density": 0.0}
    frags = extractive_fragments(summary, source)
    return {
        "coverage": sum(l for _, l in frags) / n,
        "density": sum(l * l for _, l in frags) / n,
    }


def _word_runs_to_char_spans(covered: list[bool], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    i = 0
    while i < len(covered):
        if covered[i]:
            j = i
            while j + 1 < len(covered) and covered[j + 1]:
                j += 1
            out.append((spans[i][0], spans[j][1]))
            i = j + 1
        else:
            i += 1
    return out


def _copied_words(summary_tokens: list[str], idx: SourceIndex, min_words: int) -> list[bool]:
    covered = [False] * len(summary_tokens)
    if min_words <= 0 or len(summary_tokens) < min_words:
        return covered
    windows = idx.ngrams(min_words)
    for i in range(len(summary_tokens) - min_words + 1):
        if tuple(summary_tokens[i : i + min_words]) in windows:
            for k in range(i, i + min_words):
                covered[k] = True
    return covered


def copy_spans(summary: str, source: "str | SourceIndex", min_words: int = 8) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of ``summary`` copied verbatim from the source.

    A summary word is "copied" when it lies in some window of ``min_words`` consecutive words
    that also occurs in the source (normalised tokens); consecutive copied words are merged into
    one span, from the first character of the first word to the last of the last word (so two
    copies from different source places that touch in the summary form one span).
    """
    toks = norm_tokens(summary)
    return _word_runs_to_char_spans(_copied_words(toks, _index(source), min_words), word_spans(summary))


def copy_rate(summary: str, source: "str | SourceIndex", min_words: int = 8) -> float:
    """Fraction of summary words inside :func:`copy_spans` (0 for an empty summary)."""
    toks = norm_tokens(summary)
    if not toks:
        return 0.0
    return sum(_copied_words(toks, _index(source), min_words)) / len(toks)


# =========================================================================== repetition


def _repeated_starts(toks: list[str], n: int) -> list[int]:
    seen = set()
    out = []
    for i in range(len(toks) - n + 1):
        g = tuple(toks[i : i + n])
        if g in seen:
            out.append(i)
        else:
            seen.add(g)
    return out


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Fraction of the text's n-gram occurrences that already occurred earlier (0 if none).

    Normalised whitespace tokens as in :func:`novel_ngram_ratio`; overlapping occurrences count
    ("a a a a" has two 3-grams, the second repeats the first: rate 0.5).
    """
    toks = norm_tokens(text)
    total = len(toks) - n + 1
    if total <= 0:
        return 0.0
    return len(_repeated_starts(toks, n)) / total


def repeated_spans(text: str, n: int = 3) -> list[tuple[int, int]]:
    """Character spans of the repeated n-gram occurrences (the later copies), merged."""
    toks = norm_tokens(text)
    covered = [False] * len(toks)
    for i in _repeated_starts(toks, n):
        for k in range(i, i + n):
            covered[k] = True
    return _word_runs_to_char_spans(covered, word_spans(text))


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
    idx = _index(source)
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
