"""Examples -> token sequences for supervised fine-tuning.

Every sequence is ``prompt ids + target ids``; the loss covers the target only. The prompt is
exactly the one ``sumrl eval`` / ``sumrl summarize`` build (:func:`sumrl.models.prompts.build_prompt`,
encoded with :func:`sumrl.generation.summarize.encode_prompt`), and the target is the reference
followed by :func:`sumrl.models.prompts.end_of_summary` (EOS) so the model learns to stop.

Documents that do not fit ``max_seq_len`` (together with their target) use the generation
strategies:

* ``truncate``: keep the beginning of the document, as ``--strategy truncate`` does at test time.
* ``chunk``: the map-reduce of ``--strategy chunk`` has no per-window references, so targets are
  built by oracle alignment (as in DANCER, Gidiotis & Tsoumakas 2020): each reference sentence is
  assigned to the window that covers the largest share of its (stemmed) unigrams and bigrams.
  Every window that received sentences becomes a *map* sequence (``CHUNK_INSTRUCTION`` prompt
  around the window -> its sentences, in reference order); one *reduce* sequence
  (``REDUCE_INSTRUCTION`` prompt around the sentence groups joined by newlines, as generation
  joins window summaries -> the whole reference) teaches the final step. See docs/sft.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sumrl.data.schema import Example
from sumrl.errors import DataError


@dataclass
class TrainSequence:
    """One training sequence: ``input_ids[:n_prompt]`` is the prompt, the rest is the target."""

    input_ids: list[int]
    n_prompt: int
    kind: str = "none"  # none | truncate | map | reduce

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.n_prompt

    def __len__(self) -> int:
        return len(self.input_ids)


def _target_ids(tokenizer: Any, text: str, max_target_tokens: int) -> list[int]:
    from sumrl.models.prompts import end_of_summary

    ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    eos = tokenizer(end_of_summary(tokenizer), add_special_tokens=False)["input_ids"] if end_of_summary(tokenizer) else []
    if len(ids) + len(eos) > max_target_tokens:
        # A cut reference gets no EOS: teaching the model to stop mid-sentence would be wrong.
        return ids[:max_target_tokens]
    return ids + eos


def _fit_prompt(tokenizer: Any, doc_ids: list[int], query: str | None, instruction: str | None,
                room: int) -> tuple[list[int], bool]:
    """Prompt ids of at most ``room`` tokens; the document is cut from the end if needed.

    Returns ``(ids, truncated)``. Cutting works on the *document's* tokens and re-encodes the
    decoded text (as generation does), so the re-encoded length is checked and the cut repeated.
    """
    from sumrl.generation.summarize import encode_prompt
    from sumrl.models.prompts import build_prompt, prompt_overhead_tokens

    text = tokenizer.decode(doc_ids, skip_special_tokens=True)
    ids = encode_prompt(tokenizer, build_prompt(tokenizer, text, query, instruction))
    if len(ids) <= room:
        return ids, False
    keep = min(len(doc_ids), room - prompt_overhead_tokens(tokenizer, query, instruction))
    for _ in range(8):
        if keep <= 0:
            break
        text = tokenizer.decode(doc_ids[:keep], skip_special_tokens=True)
        ids = encode_prompt(tokenizer, build_prompt(tokenizer, text, query, instruction))
        if len(ids) <= room:
            return ids, True
        keep -= len(ids) - room
    raise DataError(f"the prompt does not fit in {room} tokens even without the document; raise --max-seq-len")


def _alignment_tokens(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    from sumrl.evaluation.rouge import rouge_tokenize

    toks = rouge_tokenize(text)
    return set(toks), set(zip(toks, toks[1:]))


def align_sentences(sentences: list[str], windows: list[str]) -> list[list[int]]:
    """For each window, the indices of the sentences assigned to it (each sentence to exactly one
    window: the one with the highest unigram + bigram recall of the sentence; first on ties)."""
    win = [_alignment_tokens(w) for w in windows]
    assigned: list[list[int]] = [[] for _ in windows]
    for si, s in enumerate(sentences):
        uni, bi = _alignment_tokens(s)
        best, best_score = 0, -1.0
        for wi, (wu, wb) in enumerate(win):
            score = (len(uni & wu) / max(len(uni), 1)) + (len(bi & wb) / max(len(bi), 1))
            if score > best_score:
                best, best_score = wi, score
        assigned[best].append(si)
    return assigned


def encode_example(tokenizer: Any, ex: Example, *, max_seq_len: int, max_target_tokens: int,
                   strategy: str = "truncate", instruction: str | None = None,
                   chunk_overlap: int = 32, max_prompt_tokens: int | None = None) -> list[TrainSequence]:
    """The training sequences of one example (one, or several for ``chunk``); ``max_prompt_tokens``
    caps every prompt (as generation's prompt budget), otherwise a prompt gets what the target leaves."""
    from sumrl.generation.summarize import chunk_windows
    from sumrl.models.prompts import CHUNK_INSTRUCTION, REDUCE_INSTRUCTION, prompt_overhead_tokens

    if not ex.reference.strip():
        raise DataError("SFT needs a reference summary", field="summary", file=None, line=None)
    from sumrl.models.prompts import seq2seq_prefix

    target = _target_ids(tokenizer, ex.reference, max_target_tokens)
    doc_ids = tokenizer(ex.document, add_special_tokens=False)["input_ids"]
    # a decoder reads prompt + target in one context; an encoder-decoder's prompt has the encoder
    # to itself (max_seq_len is then the encoder's input length)
    room = max_seq_len if seq2seq_prefix(tokenizer) is not None else max_seq_len - len(target)
    if max_prompt_tokens is not None:
        room = min(room, max_prompt_tokens)
    prompt, truncated = _fit_prompt(tokenizer, doc_ids, ex.query, instruction, room)
    if not truncated or strategy == "truncate":
        return [TrainSequence(prompt + target, len(prompt), "truncate" if truncated else "none")]

    # chunk: map sequences on aligned reference sentences + one reduce sequence.
    from sumrl.evaluation.text import sentences as split_sentences

    win_room = room - prompt_overhead_tokens(tokenizer, ex.query, CHUNK_INSTRUCTION)
    windows = chunk_windows(doc_ids, win_room, chunk_overlap)
    win_texts = [tokenizer.decode(w, skip_special_tokens=True) for w in windows]
    sents = split_sentences(ex.reference) or [ex.reference.strip()]
    groups = align_sentences(sents, win_texts)
    out: list[TrainSequence] = []
    partials: list[str] = []
    for w_ids, g in zip(windows, groups):
        if not g:  # DANCER: a window no reference sentence comes from has no target
            continue
        part = " ".join(sents[i] for i in g)
        partials.append(part)
        t_ids = _target_ids(tokenizer, part, max_target_tokens)
        p_room = max_seq_len if seq2seq_prefix(tokenizer) is not None else max_seq_len - len(t_ids)
        p_ids, _ = _fit_prompt(tokenizer, w_ids, ex.query, CHUNK_INSTRUCTION, min(p_room, max_prompt_tokens or p_room))
        out.append(TrainSequence(p_ids + t_ids, len(p_ids), "map"))
    joined_ids = tokenizer("\n".join(partials), add_special_tokens=False)["input_ids"]
    p_ids, _ = _fit_prompt(tokenizer, joined_ids, ex.query, REDUCE_INSTRUCTION, room)
    out.append(TrainSequence(p_ids + target, len(p_ids), "reduce"))
    return out


def encode_examples(tokenizer: Any, examples: list[Example], **kw: Any) -> list[TrainSequence]:
    seqs: list[TrainSequence] = []
    for ex in examples:
        try:
            seqs.extend(encode_example(tokenizer, ex, **kw))
        except DataError as e:
            raise DataError(f"example '{ex.id}': {e}") from None
    return seqs
