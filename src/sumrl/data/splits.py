"""Train/val/test splits for data that does not come with its own.

Rule (docs/data.md): a row that has a ``split`` field keeps it (``validation``/``valid``/``dev``
are read as ``val``). Any other row goes to a split decided by hashing its id with the seed
(:func:`hash_split`, the one split rule of sumrl: data files, preference pairs and the learned
judges' human-judgment data all use it): ``sha256(f"{seed}:{id}")`` read as a number u in [0, 1)
-> test when u < test_fraction, val when u < test_fraction + val_fraction, train above (data
files: 10% / 10% / 80%). The hash depends only on the id and the seed, never on the row's
position, so reordering, adding or removing rows never moves an existing example to another split
(no train/test leak when a file grows), and the split is the same on every machine and Python
version (unlike hash()). Test comes first on the line so that a larger test fraction only moves
documents from train into test, never the other way.
"""

from __future__ import annotations

import hashlib

from sumrl.data.schema import Example
from sumrl.errors import DataError

SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}  # data files without a split column
_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "eval": "val", "training": "train", "testing": "test"}


def normalize_split(name: str) -> str:
    """Canonical split name: lower-case, ``validation``/``valid``/``dev`` -> ``val``."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def hash_split(key: str, seed: int = 0, test_fraction: float = FRACTIONS["test"],
               val_fraction: float = FRACTIONS["val"]) -> str:
    """``test`` / ``val`` / ``train`` of an id (or a pair's document id) under the hash rule: the
    first 8 bytes of ``sha256(f"{seed}:{key}")`` as a number u in [0, 1); test below
    ``test_fraction``, val below ``test_fraction + val_fraction``, train above."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class EmptySplitError(DataError):
    """A split that has no examples (a typo, or a user file too small to have every split)."""


def split_of(example: Example, seed: int = 0) -> str:
    """The row's own ``split`` field if it has one, else the hash rule."""
    own = example.meta.get("split")
    if isinstance(own, str) and own.strip():
        return normalize_split(own)
    return hash_split(example.id, seed)


def select_split(examples: list[Example], split: str | None, seed: int = 0, *, source: str | None = None) -> list[Example]:
    """Examples of one split (order kept); ``None`` or ``"all"`` returns everything.

    Every returned example has ``meta["split"]`` set, so later steps can report it. Asking for a
    split that ends up empty is an error (usually a typo, or a file whose ``split`` column uses
    other names), naming the splits that do exist.
    """
    for ex in examples:
        ex.meta["split"] = split_of(ex, seed)
    if split is None or normalize_split(split) == "all":
        return list(examples)
    want = normalize_split(split)
    chosen = [ex for ex in examples if ex.meta["split"] == want]
    if not chosen:
        have = sorted({ex.meta["split"] for ex in examples})
        raise EmptySplitError(f"no examples in split '{split}' (this data has: {', '.join(have)}; or use --split all)",
                              file=source)
    return chosen
