"""Micro-batches without padding waste: padding-free packing, or length-sorted padding.

**Packing.** Several sequences are concatenated into one row (batch dimension 1) with
``position_ids`` restarting at 0 for each sequence and *no* 2-D attention mask. transformers 5
detects this layout (``masking_utils.find_packed_sequence_indices``: a position that is not the
previous one + 1 starts a new sequence) and builds a block-diagonal causal mask for the sdpa and
eager kernels (flash-attention kernels use the same position_ids to derive varlen boundaries),
so no token attends across a sequence boundary and each sequence sees exactly the rotary
positions it would see alone. ``tests/test_packing.py`` checks that the packed loss equals the
padded per-sequence loss. A row holding a single sequence needs no mask at all (plain causal).

**Padding** (``--no-packing``): sequences sorted by length are grouped under the same token
budget (length bucketing), right-padded, with an attention mask.

Labels are already shifted: ``labels[t]`` is the token predicted from position ``t``, or -100
(prompt, padding, the last position of each sequence: nothing may be predicted across a
boundary).
"""

from __future__ import annotations

from typing import Any, Sequence

IGNORE_INDEX = -100


def plan_micro_batches(lengths: Sequence[int], max_tokens: int, max_sequences: int | None = None,
                       *, packing: bool = True) -> list[list[int]]:
    """Group sequence indices into micro-batches of at most ``max_tokens`` tokens.

    With packing the budget counts real tokens (first-fit decreasing bin packing); without it,
    ``rows x longest`` (the padded size). Deterministic: ties keep index order. Sequences longer
    than ``max_tokens`` get a micro-batch of their own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    if packing:
        room: list[int] = []
        for i in order:
            for g, r in enumerate(room):
                if lengths[i] <= r and (max_sequences is None or len(groups[g]) < max_sequences):
                    groups[g].append(i)
                    room[g] -= lengths[i]
                    break
            else:
                groups.append([i])
                room.append(max_tokens - lengths[i])
    else:
        for i in order:  # longest first, so a group's width is its first member's length
            g = groups[-1] if groups else None
            if g is not None and lengths[g[0]] * (len(g) + 1) <= max_tokens and (
                    max_sequences is None or len(g) < max_sequences):
                g.append(i)
            else:
                groups.append([i])
    return groups


def shifted_labels(input_ids: Sequence[int], n_prompt: int) -> list[int]:
    """Next-token labels of one sequence with the prompt masked."""
    n = len(input_ids)
    return [input_ids[t + 1] if t + 1 >= n_prompt else IGNORE_INDEX for t in range(n - 1)] + [IGNORE_INDEX]


def collate_packed(seqs: Sequence[Any]) -> dict[str, Any]:
    """One packed row: ``input_ids``, ``position_ids``, ``labels`` (1, sum of lengths); no mask."""
    import torch

    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for s in seqs:
        ids.extend(s.input_ids)
        pos.extend(range(len(s.input_ids)))
        labels.extend(shifted_labels(s.input_ids, s.n_prompt))
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "position_ids": t(pos), "labels": t(labels), "attention_mask": None}


def collate_padded(seqs: Sequence[Any], pad_id: int) -> dict[str, Any]:
    """Right-padded rows with an attention mask; positions count real tokens."""
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        labels[r, :n] = torch.tensor(shifted_labels(s.input_ids, s.n_prompt))
        mask[r, :n] = 1
        pos[r, :n] = torch.arange(n)
    return {"input_ids": ids, "position_ids": pos, "labels": labels, "attention_mask": mask}


def collate(seqs: Sequence[Any], *, packing: bool, pad_id: int) -> dict[str, Any]:
    return collate_packed(seqs) if packing else collate_padded(seqs, pad_id)


def n_target_tokens(seq: Any) -> int:
    """Tokens the loss is computed on (= non-ignored labels of :func:`shifted_labels`)."""
    return len(seq.input_ids) - max(seq.n_prompt, 1)
