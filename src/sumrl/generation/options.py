"""The generation options every command that generates summaries shares (a command's config
inherits them); :meth:`GenerationOptions.generation_settings` turns them into the engine's
:class:`~sumrl.generation.summarize.GenerationSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sumrl.config import opt
from sumrl.errors import ConfigError
from sumrl.generation.summarize import GenerationSettings


@dataclass
class GenerationOptions:
    max_new_tokens: int = opt(128, "maximum tokens generated per summary")
    max_input_tokens: Optional[int] = opt(
        None, "token budget for the prompt; longer documents use --strategy (default: model context - max_new_tokens)")
    strategy: str = opt("truncate", "long-document strategy when a document exceeds the budget: truncate = keep "
                                    "the beginning; chunk = hierarchical map-reduce", choices=["truncate", "chunk"])
    batch_size: int = opt(4, "documents generated in parallel")
    sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature (with --sample)")
    top_p: float = opt(1.0, "nucleus sampling threshold (with --sample)")
    no_repeat_ngram: int = opt(0, "decoding guard against loops: never generate the same N tokens twice in one "
                                  "summary (the prompt does not count, so copying from the document stays "
                                  "allowed); 0 = off. Applied identically to every system evaluated with it")
    instruction: Optional[str] = opt(None, "instruction placed before the document in the prompt")
    dtype: str = opt("float32", "model dtype", choices=["float32", "bfloat16"])

    def check_generation(self) -> None:
        """The generation options' own rules (each command's ``validate`` calls it, before any work)."""
        if self.no_repeat_ngram < 0:
            raise ConfigError(f"--no-repeat-ngram must be >= 0 (0 = off), got {self.no_repeat_ngram}")

    def generation_settings(self, progress: bool = True) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, do_sample=self.sample,
                                  temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size,
                                  strategy=self.strategy, max_input_tokens=self.max_input_tokens,
                                  instruction=self.instruction, seed=getattr(self, "seed", 0), progress=progress,
                                  no_repeat_ngram=self.no_repeat_ngram)
