"""The reward registry: build a weighted sum of rewards from a spec string or a recipe list.

Spec string: comma-separated ``name[:weight]`` items, e.g. ``"rouge,length:0.5,rm:runs/rm"``.
A reward-model item is ``rm:PATH[:weight]``; since paths may contain ``:``, the last ``:part`` is
read as a weight only if it parses as a float *and* ``PATH:part`` is not an existing path.

Recipe list (YAML)::

    rewards:
      - {name: rouge, weight: 1.0}
      - {name: length, weight: 0.5, per_token_penalty: -2.5}
      - {name: rm, path: runs/rm, weight: 1.0, normalize: true}

Options are the reward's keyword arguments (docs/rewards.md); an unknown option is a ConfigError
naming it and the allowed ones. ``label`` renames a reward (for two rewards of the same kind).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sumrl.errors import ConfigError
from sumrl.rewards.base import Reward, RewardInput, RewardOutput
from sumrl.rewards.metric import METRIC_REWARDS

# learned judges (docs/rewards.md, "Learned judges"): loaded lazily, from the package's shipped
# weights unless the entry gives ``path``
JUDGE_REWARDS = {"factuality": ("sumrl.rewards.factuality", "FactualityReward"),
                 "coherence_model": ("sumrl.rewards.coherence_model", "CoherenceModelReward")}
REWARD_NAMES = [*METRIC_REWARDS, *JUDGE_REWARDS, "rm"]


def _float_or_none(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v


def parse_reward_spec(spec: str) -> list[dict[str, Any]]:
    """``"rouge,length:0.5,rm:DIR:2"`` -> ``[{name: rouge}, {name: length, weight: 0.5}, {name: rm, path: DIR, weight: 2}]``."""
    items = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item == "rm" or item.startswith("rm:"):
            rest = item[3:]
            if not rest:
                raise ConfigError(f"reward spec {item!r}: rm needs a path (rm:PATH[:weight])")
            head, sep, tail = rest.rpartition(":")
            w = _float_or_none(tail) if sep else None
            if w is not None and head and not os.path.exists(rest):
                items.append({"name": "rm", "path": head, "weight": w})
            else:
                items.append({"name": "rm", "path": rest})
            continue
        name, sep, weight = item.partition(":")
        entry: dict[str, Any] = {"name": name.strip()}
        if sep:
            w = _float_or_none(weight)
            if w is None:
                raise ConfigError(f"reward spec {item!r}: weight {weight!r} is not a number (use name:weight)")
            entry["weight"] = w
        items.append(entry)
    if not items:
        raise ConfigError(f"empty reward spec {spec!r}; choose from {', '.join(REWARD_NAMES)}")
    return items


def _checked(entry: Any) -> tuple[str, type, dict[str, Any], dict[str, Any], float, str]:
    """(name, reward class, fixed options, options, weight, label) of one reward entry, checked
    without building anything (no model is loaded): a ConfigError names the reward and the option."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"reward entry {entry!r}: must be a mapping with a 'name' key")
    opts = dict(entry)
    name = str(opts.pop("name"))
    weight = opts.pop("weight", 1.0)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ConfigError(f"reward '{name}': weight {weight!r} is not a number") from None
    label = str(opts.pop("label", name))
    fixed: dict[str, Any] = {}
    if name == "rm":
        from sumrl.rewards.reward_model import RewardModelReward

        if "path" not in opts:
            raise ConfigError("reward 'rm' needs option 'path' (a folder written by `sumrl rm`)")
        cls = RewardModelReward
    elif name in JUDGE_REWARDS:
        import importlib

        mod, cls_name = JUDGE_REWARDS[name]
        cls = getattr(importlib.import_module(mod), cls_name)
    elif name in METRIC_REWARDS:
        cls, fixed = METRIC_REWARDS[name]
    else:
        raise ConfigError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")
    allowed = [o for o in cls.options() if o not in fixed]
    unknown = [k for k in opts if k not in allowed]
    if unknown:
        raise ConfigError(f"reward '{name}': unknown option(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(['weight', 'label', *allowed])}")
    return name, cls, fixed, opts, weight, label


def reward_entries(spec: str | Sequence[Any]) -> list[dict[str, Any]]:
    """The entries of a spec string or a recipe list (strings in a list are spec items)."""
    if isinstance(spec, str):
        return parse_reward_spec(spec)
    if isinstance(spec, (list, tuple)):
        return [parse_reward_spec(e)[0] if isinstance(e, str) else e for e in spec]
    raise ConfigError(f"reward spec must be a string or a list of mappings, got {type(spec).__name__}")


def validate_reward_spec(spec: str | Sequence[Any]) -> None:
    """Check every entry (name, weight, option names) when the config is read, long before the
    rewards are built at train time."""
    entries = reward_entries(spec)
    if not entries:
        raise ConfigError(f"empty reward list; choose from {', '.join(REWARD_NAMES)}")
    for e in entries:
        _checked(e)


def _build_one(entry: dict[str, Any]) -> tuple[Reward, float]:
    name, cls, fixed, opts, weight, label = _checked(entry)
    if name == "rm":
        label = label if label != "rm" else "rm"
    try:
        return cls(name=label, **fixed, **opts), weight
    except TypeError as e:
        raise ConfigError(f"reward '{name}': {e}") from None


@dataclass
class CompositeReward:
    """Weighted sum of rewards. Components: every part of every reward as ``rewards/<key>`` (unweighted),
    plus ``rewards/total`` (the weighted total, including per-token rewards)."""

    rewards: list[Reward]
    weights: list[float]
    name: str = "total"

    def __call__(self, inp: RewardInput) -> RewardOutput:
        n = len(inp)
        scores = torch.zeros(n)
        token_rewards = None
        if inp.token_ids is not None:
            token_rewards = [torch.zeros(len(ids)) for ids in inp.token_ids]
        components: dict[str, torch.Tensor] = {}
        any_tokens = False
        for reward, w in zip(self.rewards, self.weights):
            out = reward(inp)
            scores += w * out.scores.float()
            if out.token_rewards is not None:
                if token_rewards is None:  # cannot happen for the built-in rewards (they need token_ids)
                    scores += w * torch.stack([t.sum() for t in out.token_rewards])
                else:
                    any_tokens = True
                    for i, t in enumerate(out.token_rewards):
                        token_rewards[i] += w * t.float()
            for k, v in out.components.items():
                components[f"rewards/{k}"] = v
        result = RewardOutput(scores=scores, token_rewards=token_rewards if any_tokens else None, components=components)
        components["rewards/total"] = result.totals().clone()
        return result

    @property
    def needs_references(self) -> bool:
        return any(getattr(r, "needs_references", False) for r in self.rewards)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]


def build_reward(spec: str | Sequence[dict[str, Any]] | Reward) -> CompositeReward:
    """A :class:`CompositeReward` from a spec string, a recipe list of dicts, or a single reward."""
    if isinstance(spec, CompositeReward):
        return spec
    if callable(spec) and hasattr(spec, "name") and not isinstance(spec, (str, list, tuple)):
        return CompositeReward([spec], [1.0])
    entries = reward_entries(spec)
    if not entries:
        raise ConfigError("empty reward list")
    rewards, weights = [], []
    seen: dict[str, int] = {}
    for e in entries:
        r, w = _build_one(e)
        if r.name in seen:  # two rewards of one kind: keep their component names apart
            seen[r.name] += 1
            r.name = f"{r.name}_{seen[r.name]}"
        else:
            seen[r.name] = 1
        rewards.append(r)
        weights.append(w)
    return CompositeReward(rewards, weights)
