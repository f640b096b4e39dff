"""The one record type every part of sumrl passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """A document with its reference summaries (and an optional query for query-focused data)."""

    id: str
    document: str
    references: list[str] = field(default_factory=list)
    query: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """The first reference (used as the SFT target and the length target)."""
        return self.references[0] if self.references else ""
