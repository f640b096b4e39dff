"""Seeds for every random decision, derived from the run's ``--seed`` by purpose.

Two decisions that take ``seed + k`` or ``seed * M + step`` share a generator by accident as soon
as their arithmetic meets (``seed * 1_000_003 + epoch`` for the SFT epoch order and the same
expression of the step for RL's rollout decisions gave epoch 3 and step 3 the same stream).
:func:`derive_seed` hashes ``(seed, purpose, index)`` instead, so distinct purposes never collide
and one purpose's stream never depends on another's.
"""

from __future__ import annotations

import hashlib

# Purposes used in sumrl (any string works; these are named here so that they are unique).
EPOCH_ORDER = "epoch-order"  # the permutation of an epoch's training examples (SFT, RL prompts)
REFERENCE_ORDER = "reference-order"  # RL: the order of the reference (guided) steps' prompts
ROLLOUT = "rollout"  # RL: per-step rollout decisions (roll-in / roll-out points, guide calls)
MINIBATCH = "minibatch"  # RL: the shuffles of a step's episodes into mini-batches
SAMPLING = "sampling"  # RL with several processes: each rank's sampling RNG at a step
PAIR_ORDER = "pair-order"  # human study: which pairs are judged, and in what order (--select random)
SIDES = "sides"  # human study: left/right placement of each rater's pairs


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed for ``purpose`` at ``index`` (an epoch, a step) of a run seeded ``seed``: the
    first 8 bytes of ``sha256(f"{seed}:{purpose}:{index}")`` with the top bit cleared (torch's
    ``manual_seed``, ``random.Random`` and NumPy all accept it). Pure: same inputs, same seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
