"""Prompt construction: one format shared by SFT, RL, generation and evaluation.

With a chat template (SmolLM2, Qwen) the document goes in a user turn and the summary is the
assistant turn; without one (Gemma 3 base) a plain-text fallback is used. SFT masks exactly the
prompt produced here, so train and test prompts can never drift apart.
"""

from __future__ import annotations

from typing import Any

DEFAULT_INSTRUCTION = "Summarize the following document in a short paragraph."
QUERY_INSTRUCTION = "Answer the query using the document below, as a short summary."
CHUNK_INSTRUCTION = "Summarize this part of a longer document in a few sentences."
REDUCE_INSTRUCTION = "The following are summaries of consecutive parts of one document. Combine them into one short summary of the whole document."


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def user_message(document: str, query: str | None = None, instruction: str | None = None) -> str:
    if query:
        return f"{instruction or QUERY_INSTRUCTION}\n\nQuery: {query}\n\nDocument:\n{document}"
    return f"{instruction or DEFAULT_INSTRUCTION}\n\nDocument:\n{document}"


def build_prompt(tokenizer: Any, document: str, query: str | None = None, instruction: str | None = None) -> str:
    """The text the model sees before its summary (ends where generation starts)."""
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
