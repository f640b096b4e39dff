"""Source-overlap metrics (no models): a source document indexed once (:class:`SourceIndex`),
novelty (n-grams not in the source), Grusky et al.'s extractive fragments, verbatim copies, and
the summary's overlap with itself (repetition).

Every metric takes either the source text or a :class:`SourceIndex`; when given text it goes
through :func:`get_source_index`, an LRU cache, so scoring many summaries of one document
tokenises and indexes that document once.
"""

from __future__ import annotations

import functools
import re

from sumrl.evaluation.facts import FactIndex
from sumrl.evaluation.text import word_spans, words

__all__ = ["SourceIndex", "get_source_index", "source_index", "norm_tokens", "novel_ngram_ratio",
           "extractive_fragments", "fragment_stats", "copy_spans", "copy_rate", "repeated_ngram_rate",
           "repeated_spans"]

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


def source_index(source: "str | SourceIndex") -> SourceIndex:
    """The index of a source given as text (through the cache) or already indexed."""
    return source if isinstance(source, SourceIndex) else get_source_index(source)


def novel_ngram_ratio(summary: str, source: "str | SourceIndex", n: int) -> float:
    """Fraction of the summary's n-gram *occurrences* absent from the source (0 if none).

    Tokens are whitespace words, lowercased, with leading/trailing punctuation removed.
    """
    toks = norm_tokens(summary)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    src = source_index(source).ngrams(n)
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
    idx = source_index(source)
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
    return _word_runs_to_char_spans(_copied_words(toks, source_index(source), min_words), word_spans(summary))


def copy_rate(summary: str, source: "str | SourceIndex", min_words: int = 8) -> float:
    """Fraction of summary words inside :func:`copy_spans` (0 for an empty summary)."""
    toks = norm_tokens(summary)
    if not toks:
        return 0.0
    return sum(_copied_words(toks, source_index(source), min_words)) / len(toks)


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
