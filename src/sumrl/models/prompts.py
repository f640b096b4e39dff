"""Prompt construction: one format shared by SFT, RL, generation and evaluation.

With a chat template (SmolLM2, Qwen) the document goes in a user turn and the summary is the
assistant turn; without one (Gemma 3 base) a plain-text fallback is used. SFT masks exactly the
prompt produced here, so train and test prompts can never drift apart.

Encoder-decoders (T5, BART, PEGASUS, LED) take no chat template and no "Summary:" cue: the
encoder reads ``prefix + document`` where the prefix is a user ``--instruction`` if given, else the
checkpoint's own summarization prefix (``config.task_specific_params["summarization"]["prefix"]``:
``summarize: `` for T5, nothing for BART/PEGASUS/LED), and the decoder writes the summary from its
start token. A query becomes ``question: <query> context: <document>`` (the T5/UnifiedQA format).
sumrl's own instructions (the default one and the chunk/reduce ones of ``--strategy chunk``) are
not used for them: a plain summarizer summarises whatever it is given.
"""

from __future__ import annotations

from typing import Any

DEFAULT_INSTRUCTION = "Summarize the following document in a short paragraph."
QUERY_INSTRUCTION = "Answer the query using the document below, as a short summary."
CHUNK_INSTRUCTION = "Summarize this part of a longer document in a few sentences."
REDUCE_INSTRUCTION = "The following are summaries of consecutive parts of one document. Combine them into one short summary of the whole document."


SEQ2SEQ_ATTR = "sumrl_seq2seq_prefix"  # set on the tokenizers of encoder-decoder models by the loader


def mark_seq2seq(tokenizer: Any, config: Any) -> Any:
    """Record on ``tokenizer`` that its model is an encoder-decoder and the task prefix it declares
    (no-op for other configs or ``None``)."""
    from sumrl.models.seq2seq import is_encoder_decoder, task_prefix

    if config is not None and is_encoder_decoder(config):
        setattr(tokenizer, SEQ2SEQ_ATTR, task_prefix(config))
    return tokenizer


def seq2seq_prefix(tokenizer: Any) -> str | None:
    """The encoder-decoder task prefix marked on ``tokenizer``, or None for a decoder's tokenizer."""
    return getattr(tokenizer, SEQ2SEQ_ATTR, None)


def has_chat_template(tokenizer: Any) -> bool:
    if seq2seq_prefix(tokenizer) is not None:
        return False  # the encoder reads plain text (T5 tokenizers carry no template anyway)
    return bool(getattr(tokenizer, "chat_template", None))


def _seq2seq_prompt(prefix: str, document: str, query: str | None, instruction: str | None) -> str:
    if instruction and instruction not in (DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, CHUNK_INSTRUCTION,
                                           REDUCE_INSTRUCTION):
        prefix = instruction if instruction[-1:].isspace() else instruction + " "
    if query:
        return f"{prefix}question: {query} context: {document}"
    return f"{prefix}{document}"


def user_message(document: str, query: str | None = None, instruction: str | None = None) -> str:
    if query:
        return f"{instruction or QUERY_INSTRUCTION}\n\nQuery: {query}\n\nDocument:\n{document}"
    return f"{instruction or DEFAULT_INSTRUCTION}\n\nDocument:\n{document}"


def build_prompt(tokenizer: Any, document: str, query: str | None = None, instruction: str | None = None) -> str:
    """The text the model sees before its summary (ends where generation starts); for an
    encoder-decoder, the encoder's input."""
    prefix = seq2seq_prefix(tokenizer)
    if prefix is not None:
        return _seq2seq_prompt(prefix, document, query, instruction)
    msg = user_message(document, query, instruction)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                             add_generation_prompt=True)
    # plain-text fallback for base models: the summary follows "Summary:"
    return f"{msg}\n\nSummary:"


def prompt_overhead_tokens(tokenizer: Any, query: str | None = None, instruction: str | None = None) -> int:
    """Tokens the prompt costs beyond the document itself (for truncation budgets)."""
    return len(tokenizer(build_prompt(tokenizer, "", query, instruction), add_special_tokens=False)["input_ids"]) + 2


def end_of_summary(tokenizer: Any) -> str:
    """The text appended after a target summary in SFT so the model learns to stop."""
    return tokenizer.eos_token or ""
