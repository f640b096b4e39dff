"""Numbers and capitalised names, for a cheap faithfulness check of summaries.

A summary "fact" is a number or a capitalised name. A fact is *unsupported* when the source
document does not contain it (see :func:`unsupported_facts`); the share of unsupported facts is
the hallucination rate reported by ``sumrl eval``. Everything is pure regex so that it is fast
(an 8k-word source is indexed once by :class:`FactIndex` and reused for many summaries) and
needs no model download.

Extraction rules
----------------
Numbers
    Digit strings with optional thousands separators and decimals: ``1,000`` and ``1000`` both
    normalise to ``"1000"``, ``3.50`` to ``"3.5"``, ``007`` to ``"7"``. A trailing ``%`` is part
    of the span but not of the normal form (``5%`` == ``5`` == ``5 percent``): the check is about
    the quantity appearing in the source, not its unit. A following scale word (thousand,
    million, billion, trillion) is part of the span and multiplies the normal form, so
    ``2.5 million`` == ``2,500,000``. Digits glued to letters on their left (``A380``, ``B52``)
    are part of a name, not numbers. Spelled-out numbers ("five") are NOT extracted from
    summaries (they are too often not quantities: "one of the"); on the *source* side the words
    zero..twenty and the tens are added to the support set, so a summary writing "3" for the
    source's "three" is not flagged.
Names
    Maximal runs of capitalised word tokens separated by single spaces, optionally joined by
    lowercase particles (``Bank of England``, ``Ludwig van Beethoven``). Tokens in
    :data:`STOP_CAPITALISED` (pronouns, determiners, conjunctions, titles such as "Mr", common
    sentence adverbs) never start or continue a name. A *sentence-initial* capitalised token is
    ambiguous (capitalised because it starts the sentence?) and counts only if (a) it is an
    acronym (all caps, >= 2 characters: ``NASA``, ``U.S``) or has an inner capital
    (``McDonald``), or (b) the same token appears capitalised in a non-initial position elsewhere
    in the same text, or (c) it is directly followed by another capitalised name token
    (``New York officials``, ``Barack Obama said``). A possessive ``'s`` is not part of the
    span. Known limit: a lone sentence-initial name that occurs nowhere else in the text
    ("Smith resigned.") is missed.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sumrl.evaluation.text import sentence_spans

__all__ = [
    "Fact",
    "FactIndex",
    "STOP_CAPITALISED",
    "extract_facts",
    "unsupported_facts",
    "fact_precision",
    "normalise_number",
]


@dataclass(frozen=True)
class Fact:
    """A number or name found in a text: ``text == source_text[start:end]``."""

    text: str
    kind: str  # "number" or "name"
    start: int
    end: int
    norm: str


#: Capitalised words that are not names on their own: function words, pronouns, titles and
#: frequent sentence openers (lowercase; compared case-insensitively).
STOP_CAPITALISED = frozenset(
    """
    a an the this that these those there here it its he she they we i you me him her us them
    his hers their theirs our ours your yours my mine who whom whose which what when where why
    how whether if then than so but and or nor yet for of in on at to by from with without
    into onto over under after before during while as since until unless although though
    because about above below between among through throughout against despite via per
    is are was were be been being do does did has have had will would shall should can could
    may might must not no yes all any some each every both either neither many much more most
    few several such other another one none also however therefore thus hence meanwhile
    moreover furthermore nevertheless nonetheless instead otherwise overall finally first
    second third firstly secondly lastly today yesterday tomorrow now currently recently
    earlier later still already again often sometimes according
    mr mrs ms miss dr prof sir madam mx st
    """.split()
)

# Lowercase particles allowed *inside* a multiword name.
_NAME_PARTICLES = frozenset("of de du da das dos van von der den la le del della di bin ibn al".split())

_SCALES = {
    "thousand": Decimal(10) ** 3,
    "million": Decimal(10) ** 6,
    "billion": Decimal(10) ** 9,
    "trillion": Decimal(10) ** 12,
}
_SPELLED = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_SPELLED.update({w: str(10 * k) for k, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)})

# Number: not glued to a word char or separator on the left (so "A380" and the "5" of "1.5" are
# not numbers); grouped thousands must be exactly 3 digits per group; optional decimals, percent
# sign and scale word.
_NUM_RE = re.compile(
    r"(?<![\w.,])(?P<num>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<dec>\.\d+)?"
    r"(?P<pct>\s?%)?(?:\s+(?P<scale>thousand|million|billion|trillion)\b)?",
    re.IGNORECASE,
)
# Word tokens for names: start with a letter, may contain letters/digits/apostrophes/hyphens/
# inner dots ("U.S", "O'Neill", "Jean-Luc"), never end with punctuation.
_TOKEN_RE = re.compile(r"[^\W\d_](?:[\w'\u2019.\-]*\w)?")
_POSSESSIVE_RE = re.compile(r"['\u2019]s$", re.IGNORECASE)


def normalise_number(digits: str, scale: str | None = None) -> str:
    """Canonical decimal string: no separators, no leading/trailing zeros, scale applied.

    >>> normalise_number("1,000"), normalise_number("3.50"), normalise_number("2.5", "million")
    ('1000', '3.5', '2500000')
    """
    s = digits.replace(",", "")
    try:
        value = Decimal(s)
    except InvalidOperation:  # cannot happen for regex matches; keep the raw text then
        return s
    if scale:
        value *= _SCALES[scale.lower()]
    # Decimal -> plain fixed-point string without exponent or trailing zeros.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _name_word_norm(word: str) -> str:
    return _POSSESSIVE_RE.sub("", word).lower()


# --------------------------------------------------------------------------- extraction


def _numbers(text: str) -> list[Fact]:
    out = []
    for m in _NUM_RE.finditer(text):
        digits = m.group("num") + (m.group("dec") or "")
        out.append(Fact(m.group(0), "number", m.start(), m.end(), normalise_number(digits, m.group("scale"))))
    return out


def _is_capitalised(tok: str) -> bool:
    return tok[0].isupper()


def _is_acronym_like(tok: str) -> bool:
    letters = [c for c in tok if c.isalpha()]
    if len(tok) >= 2 and letters and all(c.isupper() for c in letters):
        return True  # NASA, U.S, UK, A380
    return any(c.isupper() for c in tok[1:] if c.isalpha()) and any(c.islower() for c in tok)  # McDonald


def _names(text: str) -> list[Fact]:
    toks = [(m.start(), m.end(), m.group(0)) for m in _TOKEN_RE.finditer(text)]
    if not toks:
        return []
    starts = [t[0] for t in toks]
    # Index of the first token of every sentence: those are "sentence-initial".
    initial = set()
    for s, _e in sentence_spans(text):
        k = bisect.bisect_left(starts, s)
        if k < len(toks):
            initial.add(k)
    # Words seen capitalised mid-sentence anywhere in this text: evidence that a sentence-initial
    # occurrence of the same word is a name too.
    mid_caps = {
        _name_word_norm(tok) for k, (_, _, tok) in enumerate(toks) if k not in initial and _is_capitalised(tok)
    }

    def candidate(k: int) -> bool:
        tok = toks[k][2]
        return _is_capitalised(tok) and _name_word_norm(tok) not in STOP_CAPITALISED

    def joined(k: int) -> bool:  # token k+1 follows token k after exactly one space
        return k + 1 < len(toks) and text[toks[k][1] : toks[k + 1][0]] == " "

    def accepted_initial(k: int) -> bool:
        tok = toks[k][2]
        return (
            _is_acronym_like(tok)
            or _name_word_norm(tok) in mid_caps
            or (joined(k) and candidate(k + 1) and not _POSSESSIVE_RE.search(tok))
        )

    facts: list[Fact] = []
    k = 0
    while k < len(toks):
        if not candidate(k) or (k in initial and not accepted_initial(k)):
            k += 1
            continue
        end_k = k
        # Extend over "Cap Cap" and "Cap particle Cap"; a possessive ends the name.
        while not _POSSESSIVE_RE.search(toks[end_k][2]) and joined(end_k):
            nxt = end_k + 1
            if candidate(nxt) and nxt not in initial:
                end_k = nxt
            elif (
                toks[nxt][2] in _NAME_PARTICLES
                and joined(nxt)
                and candidate(nxt + 1)
            ):
                end_k = nxt + 1
            else:
                break
        start = toks[k][0]
        last = toks[end_k][2]
        end = toks[end_k][1] - (len(last) - len(_POSSESSIVE_RE.sub("", last)))
        span = text[start:end]
        norm = " ".join(_name_word_norm(w) for w in span.split(" "))
        facts.append(Fact(span, "name", start, end, norm))
        k = end_k + 1
    return facts


def extract_facts(text: str) -> list[Fact]:
    """Numbers and names of ``text``, sorted by position (rules in the module docstring)."""
    return sorted(_numbers(text) + _names(text), key=lambda f: (f.start, f.end))


# --------------------------------------------------------------------------- support


class FactIndex:
    """What a source supports: its normalised numbers and its lowercase word tokens.

    Build it once per source document and reuse it for every summary of that document.
    """

    def __init__(self, source: str):
        self.source = source
        numbers = set()
        for m in _NUM_RE.finditer(source):
            digits = m.group("num") + (m.group("dec") or "")
            numbers.add(normalise_number(digits, m.group("scale")))
            numbers.add(normalise_number(digits))  # "5 million" also supports a bare "5"
        tokens = set()
        for m in _TOKEN_RE.finditer(source):
            w = _name_word_norm(m.group(0))
            tokens.add(w)
            # Parts of hyphenated/dotted tokens too, so "Jean-Luc" supports "Luc".
            tokens.update(p for p in re.split(r"[\-.'\u2019]", w) if p)
        numbers.update(_SPELLED[w] for w in tokens & _SPELLED.keys())
        self.numbers: frozenset[str] = frozenset(numbers)
        self.tokens: frozenset[str] = frozenset(tokens)

    def supports(self, fact: Fact) -> bool:
        if fact.kind == "number":
            return fact.norm in self.numbers
        return all(self._word_supported(w) for w in fact.norm.split(" ") if w)

    def _word_supported(self, word: str) -> bool:
        if word in self.tokens:
            return True
        parts = [p for p in re.split(r"[\-.'\u2019]", word) if p]
        return bool(parts) and all(p in self.tokens for p in parts)


def _as_index(source: "str | FactIndex") -> FactIndex:
    return source if isinstance(source, FactIndex) else FactIndex(source)


def unsupported_facts(summary: str, source: "str | FactIndex") -> list[Fact]:
    """Facts of ``summary`` that the source does not contain.

    Numbers: the normal form must be in the source's number set. Names: every word of the name
    must occur (case-insensitively, possessive stripped) among the source's word tokens; word
    order and adjacency are not checked, so "John Smith" is supported by "Smith ... John".
    """
    index = _as_index(source)
    return [f for f in extract_facts(summary) if not index.supports(f)]


def fact_precision(summary: str, source: "str | FactIndex") -> tuple[float, int, int]:
    """``(precision, n_facts, n_unsupported)`` where precision = 1 - n_unsupported / n_facts.

    A summary with no facts has precision 1.0 (and hallucination rate 0.0): nothing it states
    is contradicted by omission. Read it together with ``n_facts``.
    """
    index = _as_index(source)
    facts = extract_facts(summary)
    n_bad = sum(1 for f in facts if not index.supports(f))
    if not facts:
        return 1.0, 0, 0
    return (len(facts) - n_bad) / len(facts), len(facts), n_bad
