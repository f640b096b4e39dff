"""Negative summaries for the synthetic reward model (no human feedback).

Each class is a pure function ``f(example_index, examples, rng) -> str | None`` of the positive
example ``examples[i]`` (its first reference), seeded through ``rng`` (a ``random.Random``):
same inputs and seed, same output. ``None`` means the class does not apply to this example
(e.g. an entity swap on a reference without names); the class is then a little smaller than the
positives, and its held-out accuracy is computed on the examples where it applies.

Classes of the last-mile paper (Reinforcement Learning without Human Feedback for Last Mile
Fine-Tuning): ``random`` (random tokens), ``repair`` (another document's reference),
``shuffle`` (the reference's words shuffled), ``repeat_end`` (starts like the reference, ends
repeating itself), ``copy_input`` (the beginning of the input document).
Richer classes: ``entity_swap``, ``number_change``, ``negation``, ``insert_sentence``,
``truncate`` (see each function). All of them produce text that stays fluent locally, so the
reward model has to look at the document or at the whole summary to reject it.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Callable, Sequence

from sumrl.data.schema import Example
from sumrl.evaluation.facts import extract_facts
from sumrl.evaluation.text import sentence_spans, sentences


def _ref(ex: Example) -> str:
    return ex.references[0] if ex.references else ""


def _words_vocab(examples: Sequence[Example], limit: int = 20000) -> list[str]:
    seen: dict[str, None] = {}
    for ex in examples:
        for w in _ref(ex).split():
            seen.setdefault(w, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def random_tokens(i: int, examples: Sequence[Example], rng: random.Random, vocab: Sequence[str] | None = None) -> str | None:
    """As many random tokens as the reference has words, drawn uniformly from ``vocab``
    (default: the words of all references; a word-level stand-in for the paper's random tokens,
    so the text is readable by any backbone tokenizer)."""
    n = len(_ref(examples[i]).split())
    vocab = vocab or _words_vocab(examples)
    if n == 0 or not vocab:
        return None
    return " ".join(rng.choice(vocab) for _ in range(n))


def repair(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """The reference of another example whose document differs (a summary of the wrong document)."""
    others = [j for j in range(len(examples)) if j != i and examples[j].document != examples[i].document and _ref(examples[j])]
    if not others:
        return None
    return _ref(examples[rng.choice(others)])


def shuffle(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """The reference's words in a random order (guaranteed different when possible)."""
    w = _ref(examples[i]).split()
    if len(set(w)) < 2:
        return None
    out = list(w)
    for _ in range(10):
        rng.shuffle(out)
        if out != w:
            break
    return " ".join(out)


def repeat_end(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """Keeps the first 30-60% of the reference, then repeats its last few words (a 3-6 word
    phrase) until the reference length is reached: starts correctly, ends in repetition."""
    w = _ref(examples[i]).split()
    if len(w) < 8:
        return None
    keep = max(4, int(len(w) * rng.uniform(0.3, 0.6)))
    k = min(rng.randint(3, 6), keep)  # the phrase must lie inside the kept prefix (never empty)
    phrase = w[keep - k:keep]
    out = w[:keep]
    while len(out) < len(w):
        out.extend(phrase)
    return " ".join(out[:max(len(w), keep + 2 * k)])


def copy_input(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """The first N words of the input document, N = the reference's word count."""
    n = len(_ref(examples[i]).split())
    d = examples[i].document.split()
    if not n or not d:
        return None
    return " ".join(d[:n])


@functools.lru_cache(maxsize=4096)
def _doc_names(document: str) -> tuple:
    # names of the document's first 4000 characters (title, authors, introduction): fact
    # extraction over a whole 8k-word paper per example would dominate the data preparation
    return tuple(f for f in extract_facts(document[:4000]) if f.kind == "name")


def entity_swap(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """One name of the reference replaced by a different name: from the same document if it
    has other names (a plausible but wrong attribution), else from another document."""
    ref = _ref(examples[i])
    names = [f for f in extract_facts(ref) if f.kind == "name"]
    if not names:
        return None
    target = rng.choice(names)
    ref_norms = {f.norm for f in names}
    doc_names = sorted({f.text for f in _doc_names(examples[i].document) if f.norm not in ref_norms and len(f.text) > 2})
    if not doc_names:
        j = rng.randrange(len(examples))
        doc_names = sorted({f.text for f in extract_facts(_ref(examples[j])) if f.kind == "name" and f.norm not in ref_norms})
    if not doc_names:
        return None
    return ref[:target.start] + rng.choice(doc_names) + ref[target.end:]


def _change_number(text: str, rng: random.Random) -> str:
    digits = text.replace(",", "")
    m = re.match(r"(\d+)(\.\d+)?", digits)
    if not m:
        return text
    whole, dec = m.group(1), m.group(2) or ""
    v = int(whole)
    choices = [v + d for d in (1, 2, 3, 5, 10) if v + d != v] + [v * 2, max(0, v - 1) if v > 1 else v + 7]
    if 1900 <= v <= 2100:  # years: a nearby other year
        choices = [v + d for d in (-3, -2, -1, 1, 2, 3)]
    new = rng.choice([c for c in choices if c != v])
    if dec:
        return f"{new}{dec}"
    return f"{new:,}" if "," in text else str(new)


def number_change(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """One number of the reference changed to a different value (years stay years)."""
    ref = _ref(examples[i])
    nums = [f for f in extract_facts(ref) if f.kind == "number"]
    if not nums:
        return None
    f = rng.choice(nums)
    m = re.match(r"[\d,]+(?:\.\d+)?", f.text)
    if not m:
        return None
    end = f.start + m.end()
    return ref[:f.start] + _change_number(m.group(0), rng) + ref[end:]


# (pattern, replacement) pairs; each flips the polarity of one clause
_NEGATIONS = [
    (r"\b(is|are|was|were|has|have|had|does|do|did|can|could|will|would|should|must|may)\s+not\b", r"\1"),
    (r"\b(is|are|was|were|does|do|did|can|could|will|would|should)n't\b", r"\1"),
    (r"\bcannot\b", "can"),
    (r"\b(is|are|was|were|can|could|will|would|should|must|may|has|have|had)\b(?!\s+not\b)", r"\1 not"),
    (r"\b(outperforms|improves|increases|reduces|shows|achieves|uses|requires|helps)\b", r"does not \1"),
]
_VERB_BASE = {"outperforms": "outperform", "improves": "improve", "increases": "increase", "reduces": "reduce",
              "shows": "show", "achieves": "achieve", "uses": "use", "requires": "require", "helps": "help"}


def negation(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """One clause's polarity flipped: remove an existing negation ("is not" -> "is") or add one
    ("is" -> "is not", "improves" -> "does not improve")."""
    ref = _ref(examples[i])
    cands = []
    for k, (pat, _) in enumerate(_NEGATIONS):
        for m in re.finditer(pat, ref, flags=re.IGNORECASE):
            cands.append((m.start(), m.end(), k))
    if not cands:
        return None
    s, e, k = rng.choice(cands)
    pat, rep = _NEGATIONS[k]
    piece = re.sub(pat, rep, ref[s:e], count=1, flags=re.IGNORECASE)
    if k == 4:
        verb = ref[s:e]
        piece = "does not " + _VERB_BASE.get(verb.lower(), verb)
    return ref[:s] + piece + ref[e:]


def insert_sentence(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """A sentence from another example's document inserted at a random sentence boundary of the
    reference (a plausible-looking off-topic sentence)."""
    ref = _ref(examples[i])
    others = [j for j in range(len(examples)) if examples[j].document != examples[i].document]
    if not others or not ref.strip():
        return None
    for _ in range(5):
        j = rng.choice(others)
        doc = examples[j].document
        start = rng.randrange(max(1, len(doc) - 3000)) if len(doc) > 3000 else 0
        sents = sentences(doc[start:start + 3000])
        # a window cut inside the document may start/end mid-sentence: drop those edge pieces
        sents = sents[1 if start > 0 else 0:len(sents) - 1 if start + 3000 < len(doc) else len(sents)]
        cands = [s for s in sents if 6 <= len(s.split()) <= 40]
        if cands:
            break
    else:
        return None
    sent = rng.choice(cands).strip()
    spans = sentence_spans(ref)
    cut = rng.choice([0] + [e for _, e in spans])
    left, right = ref[:cut].rstrip(), ref[cut:].lstrip()
    return " ".join(p for p in (left, sent, right) if p)


def truncate(i: int, examples: Sequence[Example], rng: random.Random) -> str | None:
    """The reference cut in the middle of a sentence (between 30% and 80% of its words, never
    right after sentence-final punctuation), without a final period."""
    w = _ref(examples[i]).split()
    if len(w) < 6:
        return None
    lo, hi = max(2, int(len(w) * 0.3)), max(3, int(len(w) * 0.8))
    cuts = [k for k in range(lo, hi + 1) if not w[k - 1].endswith((".", "!", "?"))]
    if not cuts:
        return None
    return " ".join(w[:rng.choice(cuts)]).rstrip(",;:")


NEGATIVE_CLASSES: dict[str, Callable[[int, Sequence[Example], random.Random], str | None]] = {
    "random": random_tokens,
    "repair": repair,
    "shuffle": shuffle,
    "repeat_end": repeat_end,
    "copy_input": copy_input,
    "entity_swap": entity_swap,
    "number_change": number_change,
    "negation": negation,
    "insert_sentence": insert_sentence,
    "truncate": truncate,
}
PAPER_CLASSES = ["random", "repair", "shuffle", "repeat_end", "copy_input"]


def make_negatives(examples: Sequence[Example], classes: Sequence[str] | None = None, seed: int = 0
                   ) -> dict[str, list[str | None]]:
    """``{class: [negative for example 0, 1, ...]}``, each class with its own seeded RNG per
    example (so adding a class or an example never changes another's negatives)."""
    classes = list(classes or NEGATIVE_CLASSES)
    vocab = _words_vocab(examples)
    out: dict[str, list[str | None]] = {}
    for c in classes:
        fn = NEGATIVE_CLASSES[c]
        col = []
        for i, ex in enumerate(examples):
            rng = random.Random(f"{seed}:{c}:{ex.id}")
            col.append(fn(i, examples, rng, vocab) if c == "random" else fn(i, examples, rng))
        out[c] = col
    return out
