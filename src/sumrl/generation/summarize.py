"""Batched summary generation with long-document strategies.

Documents whose prompt exceeds the input budget (``max_input_tokens``, default = the model
context minus ``max_new_tokens``) are handled by a strategy:

* ``truncate``: keep the first tokens of the document that fit the budget.
* ``chunk``: hierarchical map-reduce. The document is split into token windows that fit the
  budget (with a small overlap so sentences cut at a boundary appear whole in one window); each
  window is summarised (map); the window summaries, joined in order, are summarised into one
  (reduce). If the joined summaries still do not fit, they are chunked and reduced again,
  recursively (at most ``max_depth`` levels, then truncated). Every level is batched across all
  documents, so chunking costs generation calls per level, not per document.

The strategy actually used is recorded per example (``none`` when the document fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from sumrl.data.schema import Example
from sumrl.errors import SumrlError
from sumrl.models.loading import context_length, prompt_capacity
from sumrl.models.prompts import CHUNK_INSTRUCTION, REDUCE_INSTRUCTION, build_prompt, has_chat_template, prompt_overhead_tokens

STRATEGIES = ("truncate", "chunk")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 4
    strategy: str = "truncate"
    max_input_tokens: int | None = None
    chunk_overlap: int = 32
    max_depth: int = 4
    instruction: str | None = None
    seed: int = 0
    progress: bool = True
    no_repeat_ngram: int = 0  # > 0: no N-token sequence twice within one generated summary


@dataclass
class SummaryOutput:
    text: str
    strategy: str
    n_document_tokens: int
    n_input_tokens: int
    n_output_tokens: int
    finished: bool
    n_chunks: int = 1
    depth: int = 0
    chunk_summaries: list[str] = field(default_factory=list)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    # chat templates already contain BOS/role tokens; plain prompts get the tokenizer's specials
    return tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    g = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(g, int):
        ids.add(g)
    elif g:
        ids.update(int(x) for x in g)
    return sorted(ids)


def generate_new_tokens(model: Any, ids: Any, mask: Any, **kwargs: Any) -> Any:
    """``model.generate`` on left-padded prompts ``(B, L)``, returning only the new tokens ``(B, n)``,
    for a decoder (the prompt is the start of its output) or an encoder-decoder (the prompt goes
    to the encoder, once per run of identical prompts: :func:`sumrl.models.seq2seq.generate`)."""
    from sumrl.models.seq2seq import generate as seq2seq_generate, is_encoder_decoder

    if is_encoder_decoder(model):
        return seq2seq_generate(model, ids, mask, **kwargs)
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return out[:, ids.shape[1]:]


def no_repeat_processor(n: int, prompt_width: int) -> Any:
    """transformers' NoRepeatNGramLogitsProcessor restricted to the generated tokens.

    Given to ``generate`` as ``no_repeat_ngram_size``, it would also ban every n-gram of the
    *prompt* in a decoder-only model (its ``input_ids`` hold the prompt), i.e. forbid copying any
    phrase of the document. All prompts of a batch are left-padded to ``prompt_width``, so the
    generated tokens are the columns from ``prompt_width`` on, the same for every row."""
    from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor

    class _GeneratedOnly(LogitsProcessor):
        def __init__(self) -> None:
            self.inner = NoRepeatNGramLogitsProcessor(n)

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            return self.inner(input_ids[:, prompt_width:], scores)

    return _GeneratedOnly()


def generate_texts(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings,
                   desc: str = "generate", on_progress: Callable[[int], None] | None = None) -> list[tuple[str, int, bool, int]]:
    """Generate one completion per prompt.

    Returns a list of ``(text, n_new_tokens, finished, n_prompt_tokens)`` where ``finished`` is
    True iff an end-of-sequence token was produced within ``max_new_tokens``.
    """
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # long first: OOM early, pad little
    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    results: list[Any] = [None] * len(prompts)
    gen = torch.Generator().manual_seed(settings.seed)
    bar = tqdm(total=len(prompts), desc=desc, disable=not settings.progress, unit="doc", leave=False)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), settings.batch_size):
            idx = order[s:s + settings.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                e = encoded[i]
                ids[r, width - len(e):] = torch.tensor(e)
                mask[r, width - len(e):] = 1
            kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                          pad_token_id=pad, eos_token_id=stop)
            if settings.do_sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            else:  # silence sampling defaults from generation_config
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if settings.no_repeat_ngram > 0:
                from transformers import LogitsProcessorList

                from sumrl.models.seq2seq import is_encoder_decoder

                if is_encoder_decoder(model):  # the decoder's input_ids are the generated tokens only
                    kwargs.update(no_repeat_ngram_size=settings.no_repeat_ngram)
                else:
                    kwargs.update(logits_processor=LogitsProcessorList([no_repeat_processor(settings.no_repeat_ngram,
                                                                                             width)]))
            with torch.inference_mode():
                new = generate_new_tokens(model, ids.to(device), mask.to(device), **kwargs).cpu()
            for r, i in enumerate(idx):
                toks = new[r].tolist()
                finished = False
                n = len(toks)
                for j, t in enumerate(toks):
                    if t in stop:
                        finished, n = True, j
                        break
                while n > 0 and toks[n - 1] == pad:  # rows that stopped early are right-padded
                    n -= 1
                text = tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
                results[i] = (text, n + (1 if finished else 0), finished, len(encoded[i]))
            bar.update(len(idx))
            if on_progress:
                on_progress(len(idx))
    finally:
        bar.close()
        if was_training:
            model.train()
    return results


def input_budget(model: Any, settings: GenerationSettings) -> int:
    """Prompt tokens per generation call: ``--max-input-tokens``, capped by what the model accepts
    (a decoder's context minus ``max_new_tokens``; an encoder-decoder's encoder limit, except for
    relative-position encoders (T5), where ``--max-input-tokens`` may exceed the trained length)."""
    from sumrl.models.seq2seq import has_hard_input_limit, is_encoder_decoder

    ctx = context_length(model)
    cap = prompt_capacity(model, settings.max_new_tokens)
    budget = settings.max_input_tokens or cap
    if not (is_encoder_decoder(model) and not has_hard_input_limit(model)):
        budget = min(budget, cap)
    if budget < 64:
        raise SumrlError(f"input budget of {budget} tokens is too small (context {ctx}, "
                         f"max_new_tokens {settings.max_new_tokens})")
    return budget


def chunk_windows(ids: list[int], size: int, overlap: int) -> list[list[int]]:
    """The map step's token windows: consecutive windows of ``size`` tokens, each starting
    ``size - overlap`` after the previous one (so a sentence cut at a boundary appears whole in one
    window); together they cover every token. Shared by generation and the chunk-level SFT
    targets (:mod:`sumrl.training.data`), which must see the same windows."""
    if len(ids) <= size:
        return [ids]
    step = max(1, size - overlap)
    n = math.ceil((len(ids) - overlap) / step)
    return [ids[i * step:i * step + size] for i in range(n)]


def summarize(model: Any, tokenizer: Any, examples: list[Example], settings: GenerationSettings) -> list[SummaryOutput]:
    """Summarise examples, applying the long-document strategy where needed."""
    if settings.strategy not in STRATEGIES:
        raise SumrlError(f"unknown strategy '{settings.strategy}' (choose from {', '.join(STRATEGIES)})")
    budget = input_budget(model, settings)
    outs: list[SummaryOutput | None] = [None] * len(examples)
    doc_ids = [tokenizer(ex.document, add_special_tokens=False)["input_ids"] for ex in examples]

    final_prompts: dict[int, str] = {}
    chunk_state: dict[int, dict] = {}
    for i, ex in enumerate(examples):
        room = budget - prompt_overhead_tokens(tokenizer, ex.query, settings.instruction)
        if room < 1:  # truncating the document cannot help: the query and instruction alone are too long
            raise SumrlError(f"example '{ex.id}': the prompt without its document takes {budget - room} tokens, more "
                             f"than the {budget} the model accepts; shorten the query/--instruction or raise "
                             f"--max-input-tokens")
        if len(doc_ids[i]) <= room:
            final_prompts[i] = build_prompt(tokenizer, ex.document, ex.query, settings.instruction)
            chunk_state[i] = {"strategy": "none", "n_chunks": 1, "depth": 0, "partials": []}
        elif settings.strategy == "truncate":
            text = tokenizer.decode(doc_ids[i][:room], skip_special_tokens=True)
            final_prompts[i] = build_prompt(tokenizer, text, ex.query, settings.instruction)
            chunk_state[i] = {"strategy": "truncate", "n_chunks": 1, "depth": 0, "partials": []}
        else:
            chunk_state[i] = {"strategy": "chunk", "n_chunks": 0, "depth": 0, "partials": [],
                              "pending": doc_ids[i]}

    # map/reduce levels, batched across documents
    level = 0
    while any("pending" in st for st in chunk_state.values()):
        level += 1
        jobs: list[tuple[int, str]] = []
        for i, st in chunk_state.items():
            if "pending" not in st:
                continue
            ex = examples[i]
            instr = CHUNK_INSTRUCTION if level == 1 else REDUCE_INSTRUCTION
            room = budget - prompt_overhead_tokens(tokenizer, ex.query, instr)
            wins = chunk_windows(st.pop("pending"), room, settings.chunk_overlap if level == 1 else 0)
            if level == 1:
                st["n_chunks"] = len(wins)
            st["depth"] = level
            st["jobs"] = len(wins)
            for w in wins:
                jobs.append((i, build_prompt(tokenizer, tokenizer.decode(w, skip_special_tokens=True), ex.query, instr)))
        gens = generate_texts(model, tokenizer, [p for _, p in jobs], settings, desc=f"chunk level {level}")
        partials: dict[int, list[str]] = {}
        for (i, _), g in zip(jobs, gens):
            partials.setdefault(i, []).append(g[0])
        for i, parts in partials.items():
            st = chunk_state[i]
            st["partials"] = parts if level == 1 else st["partials"]
            joined = "\n".join(p for p in parts if p)
            ex = examples[i]
            room = budget - prompt_overhead_tokens(tokenizer, ex.query, REDUCE_INSTRUCTION)
            jids = tokenizer(joined, add_special_tokens=False)["input_ids"]
            if len(jids) <= room or level >= settings.max_depth:
                final_prompts[i] = build_prompt(tokenizer, tokenizer.decode(jids[:room], skip_special_tokens=True),
                                                ex.query, REDUCE_INSTRUCTION)
            else:
                st["pending"] = jids

    order = sorted(final_prompts)
    gens = generate_texts(model, tokenizer, [final_prompts[i] for i in order], settings, desc="summarize")
    for i, (text, n_out, finished, n_in) in zip(order, gens):
        st = chunk_state[i]
        outs[i] = SummaryOutput(text=text, strategy=st["strategy"], n_document_tokens=len(doc_ids[i]),
                                n_input_tokens=n_in, n_output_tokens=n_out, finished=finished,
                                n_chunks=st["n_chunks"], depth=st["depth"], chunk_summaries=st["partials"])
    return outs  # type: ignore[return-value]
