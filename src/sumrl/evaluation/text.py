"""Plain-text helpers shared by the metrics: words, sentences, and output cleanup.

Everything here is pure regex/str code with no downloads (nltk's punkt model would need the
network), so it behaves the same on every machine.

* :func:`words` -- whitespace tokens. This is THE unit for every length in sumrl (summary
  length, extra words, compression ratio, length-adjusted ROUGE).
* :func:`sentences` / :func:`sentence_spans` -- a rule-based sentence splitter.
* :func:`cleanup` -- the post-processing baseline of the seed paper ("Reinforcement Learning
  without Human Feedback for Last Mile Fine-Tuning"): drop an assistant preamble, then keep the
  first line.
"""

from __future__ import annotations

import re

__all__ = ["words", "word_spans", "sentences", "sentence_spans", "cleanup", "PREAMBLE_PATTERNS"]

_WORD_RE = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """Whitespace tokens of ``text`` (``str.split()``); the length unit used everywhere."""
    return text.split()


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each whitespace token, aligned with :func:`words`."""
    return [m.span() for m in _WORD_RE.finditer(text)]


# --------------------------------------------------------------------------- sentences

# Abbreviations that (almost) never end a sentence. Corporate suffixes ("Inc.", "Ltd.") and
# "etc." are deliberately absent: they end sentences often enough that a following capital
# letter is better evidence of a boundary than the abbreviation is of none.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft vs cf al fig figs eq eqs no nos vol vols pp approx
    dept univ gen gov sen rep lt col capt sgt rev est
    jan feb mar apr jun jul aug sep sept oct nov dec
    """.split()
)
# Dotted abbreviations such as "e.g", "i.e", "U.S", "a.m" (the final dot is the candidate
# boundary, so it is not part of the word examined here).
_DOTTED_ABBREV_RE = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")
# Candidate boundary: terminal punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY_RE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+\S)")
_NEXT_CHAR_RE = re.compile(r"\s*(\S)")
_PREV_WORD_RE = re.compile(r"(\S*?)[.!?]+[\"'\u201d\u2019)\]]*$")


def _is_boundary(line: str, m: re.Match) -> bool:
    punct = m.group(0)
    # the next non-space character, without copying the rest of the line (quadratic on long lines)
    nxt = _NEXT_CHAR_RE.match(line, m.end()).group(1)
    # A lowercase continuation means the sentence goes on ("e.g. the", "U.S. officials").
    if nxt.islower():
        return False
    if punct.rstrip("\"'\u201d\u2019)]") == ".":
        # search near the boundary, not from the line start (quadratic on an 8k-word line); if the
        # match starts exactly at the window start, the word may run further back: search it all
        lo = max(0, m.start() - 256)
        prev = _PREV_WORD_RE.search(line, lo, m.end())
        if prev is not None and lo > 0 and prev.start() == lo:
            prev = _PREV_WORD_RE.search(line, 0, m.end())
        word = prev.group(1) if prev else ""
        word = word.lstrip("\"'(\u201c\u2018[")
        if word.lower() in _ABBREVIATIONS:
            return False  # "Fig. 3", "et al. (2018)", "Dr. Smith"
        if _DOTTED_ABBREV_RE.match(word):
            return False  # "e.g. Paris", "i.e. The", "U.S. Army"
        if len(word) == 1 and word.isupper():
            return False  # an initial: "J. Smith"
    return True


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of the sentences of ``text`` (stripped, non-empty).

    Rules: a newline always ends a sentence; inside a line, ``.``/``!``/``?`` (optionally
    followed by closing quotes/brackets) followed by whitespace ends a sentence unless the next
    character is lowercase, or the dot ends a known abbreviation ("Dr.", "Fig.", "et al."), a
    dotted abbreviation ("e.g.", "i.e.", "U.S.") or a single-capital initial ("J."). Decimals such
    as "3.5" never split because no whitespace follows the dot.
    """
    spans: list[tuple[int, int]] = []
    offset = 0
    for line in text.split("\n"):
        start = 0
        for m in _BOUNDARY_RE.finditer(line):
            if _is_boundary(line, m):
                _add_span(spans, line, offset, start, m.end())
                start = m.end()
        _add_span(spans, line, offset, start, len(line))
        offset += len(line) + 1
    return spans


def _add_span(spans: list[tuple[int, int]], line: str, offset: int, s: int, e: int) -> None:
    chunk = line[s:e]
    stripped = chunk.strip()
    if stripped:
        lead = len(chunk) - len(chunk.lstrip())
        spans.append((offset + s + lead, offset + s + lead + len(stripped)))


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` (see :func:`sentence_spans` for the rules)."""
    return [text[s:e] for s, e in sentence_spans(text)]


# --------------------------------------------------------------------------- cleanup

_ACK = r"(?:sure|certainly|of\s+course|okay|ok|absolutely|great|alright|all\s+right)"
_SUMMARY_WORD = r"(?:summary|summarization|summarisation|tl;?\s*dr|overview|recap|synopsis)"
_MD = r"[*#>_\s]*"  # markdown decoration models like to wrap headers in

#: The preamble regexes of :func:`cleanup`, tried (case-insensitively) at the start of the
#: stripped output, repeatedly, so stacked preambles ("Sure!\n\nHere is a summary:") all go.
#: Each one consumes only the preamble itself, never summary content.
PREAMBLE_PATTERNS: dict[str, re.Pattern] = {
    # "Sure, here is a summary of the document:" -- everything up to and including the colon,
    # whether the summary follows on the same line or the next.
    "here_is_colon": re.compile(
        rf"^{_MD}(?:{_ACK}\b[^\n:]{{0,40}}?[,.!]\s*)?here(?:'s|\u2019s|\s+is|\s+are)\b"
        rf"[^\n:]{{0,120}}?\b{_SUMMARY_WORD}\b[^\n:]{{0,120}}:[*_]*",
        re.IGNORECASE,
    ),
    # "Here is a summary of the document." on a line of its own (no colon): drop the whole line.
    "here_is_line": re.compile(
        rf"^{_MD}(?:{_ACK}\b[^\n]{{0,40}}?[,.!]\s*)?here(?:'s|\u2019s|\s+is|\s+are)\b"
        rf"[^\n]{{0,120}}?\b{_SUMMARY_WORD}\b[^\n]{{0,120}}?[.!]?[*_]*[ \t]*(?=\n)",
        re.IGNORECASE,
    ),
    # "Summary:", "**Summary:**", "TL;DR:" prefix, same line or its own line.
    "summary_label": re.compile(rf"^{_MD}{_SUMMARY_WORD}{_MD}:[*_]*", re.IGNORECASE),
    # "## Summary" / "**Summary**" header line without a colon.
    "summary_header": re.compile(rf"^{_MD}{_SUMMARY_WORD}[*_]*[ \t]*(?=\n)", re.IGNORECASE),
    # A bare acknowledgement line: "Sure!", "Certainly.", "Sure, I'd be happy to help!". The
    # helper phrase must start with I/happy/glad so that content such as "Great Britain ..."
    # is never taken for an acknowledgement.
    "ack_line": re.compile(
        rf"^{_ACK}[!.,]*(?:[ \t]*(?:I\b|I'|I\u2019|happy|glad)[^\n]{{0,80}})?[ \t]*(?=\n)",
        re.IGNORECASE,
    ),
}


def cleanup(text: str) -> str:
    """The seed paper's post-processing baseline: drop an assistant preamble, keep line one.

    1. Strip, then repeatedly remove a leading preamble matched by one of
       :data:`PREAMBLE_PATTERNS` ("Sure, here is a summary of the document:", "Here's a brief
       summary.", "Summary:", "**TL;DR:**", "Certainly!" alone on a line), case-insensitive.
    2. Strip again and keep only the text before the first newline.

    Limits: a preamble that shares its line with the summary and has no colon ("Here is a
    summary the company grew.") is not recognised (only full preamble lines or ``...:`` prefixes
    are), because without the colon there is no reliable end of the preamble.
    """
    rest = text.strip()
    for _ in range(8):  # bounded: each pass removes at least one non-empty preamble
        for pattern in PREAMBLE_PATTERNS.values():
            m = pattern.match(rest)
            if m and m.end() > 0:
                rest = rest[m.end():].strip()
                break
        else:
            break
    return rest.split("\n", 1)[0].strip()
