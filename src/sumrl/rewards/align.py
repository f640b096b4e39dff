"""Map character spans of a decoded summary onto its generated tokens.

Rewards that localise a problem (a repeated n-gram, a copied span, an unsupported number) find
it as character spans of the summary *text*; the RL trainers need one value per *generated
token*. :func:`token_char_spans` gives each token the characters it contributes to
``tokenizer.decode(token_ids, skip_special_tokens=True)``, by incremental decoding: the end of
token k is the length of the longest common prefix of ``decode(ids[:k+1])`` and the full text.

Why a common prefix and not ``len(decode(ids[:k+1]))``: with byte-level BPE a token may hold only
part of a UTF-8 character, and decoding a prefix that ends inside a character yields U+FFFD,
which does not match the full text; SentencePiece tokenizers drop or add a leading space
depending on what follows, and ``clean_up_tokenization_spaces`` can rewrite " ." as "." once
the next token is known. The common prefix never counts such characters, so a token that only
starts a character gets an empty span and the token that completes it gets the whole
character. Spans are contiguous, non-decreasing and cover the full text exactly.
"""

from __future__ import annotations

from typing import Any, Sequence


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on prefix equality (slices compare in C)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def token_char_spans(tokenizer: Any, token_ids: Sequence[int], text: str | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each token in ``text`` (default: ``decode(token_ids, skip_special_tokens=True)``).

    Special tokens and tokens holding an incomplete UTF-8 character get an empty span
    ``(e, e)``. Costs one decode per token (a summary of a few hundred tokens takes milliseconds).
    """
    ids = [int(t) for t in token_ids]
    full = tokenizer.decode(ids, skip_special_tokens=True) if text is None else text
    spans: list[tuple[int, int]] = []
    prev = 0
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=True)
        end = len(prefix) if full.startswith(prefix) else _common_prefix_len(prefix, full)
        end = max(end, prev)  # never go back: a later token cannot un-emit characters
        spans.append((prev, end))
        prev = end
    if spans and prev < len(full):
        # text not reached by any prefix (e.g. a tokenizer that post-processes the whole string):
        # give the remainder to the last token rather than silently dropping it
        s, _ = spans[-1]
        spans[-1] = (s, len(full))
    return spans


def spread_penalties(n_tokens: int, token_spans: Sequence[tuple[int, int]],
                     penalties: Sequence[tuple[tuple[int, int], float]]) -> tuple[list[float], float]:
    """Spread each ``((start, end), value)`` evenly over the tokens that carry the span.

    Returns ``(per_token_values, leftover)``: ``leftover`` is the total of spans that no token
    carries (cannot happen when the text is the decode of the tokens; kept so nothing is lost).
    The sum of the per-token values plus the leftover equals the sum of the penalties, so a
    reward's total is the same with and without token ids.
    """
    out = [0.0] * n_tokens
    leftover = 0.0
    for (a, b), value in penalties:
        idx = [k for k, (s, e) in enumerate(token_spans) if e > s and s < b and e > a]
        if not idx:
            leftover += value
            continue
        share = value / len(idx)
        for k in idx:
            out[k] += share
    return out, leftover
