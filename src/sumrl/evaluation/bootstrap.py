"""Bootstrap confidence intervals and paired bootstrap tests for per-example metrics.

Percentile bootstrap (Efron & Tibshirani 1993): resample the examples with replacement,
recompute the mean, and read the interval off the percentiles of the resampled means. Vectorised
with numpy; the resample index matrix is built in chunks so that memory stays bounded for large
eval sets. NaNs (metrics undefined for an example) are dropped before resampling.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap", "aggregate"]

# At most this many sampled indices in memory at once (8 bytes each -> ~32 MB).
_MAX_CHUNK_ELEMENTS = 4_000_000


def _clean(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return x[~np.isnan(x)]


def _resampled_means(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(n, 1))
    out = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: Iterable[float], n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high"}``: sample mean and percentile-bootstrap (1-alpha) CI.

    NaNs are ignored. No finite value -> all three NaN; one value -> a zero-width interval.
    The same ``seed`` gives the same interval.
    """
    x = _clean(values)
    if len(x) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if len(x) == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean}
    means = _resampled_means(x, n_resamples, np.random.default_rng(seed))
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi)}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Paired bootstrap of ``mean(a - b)`` over the same examples.

    Returns ``delta`` (observed mean difference), its percentile (1-alpha) CI, and a two-sided
    ``p_value = min(1, 2 * min((#{d* <= 0} + 1) / (B + 1), (#{d* >= 0} + 1) / (B + 1)))`` where
    d* are the B resampled mean differences: twice the smaller tail of the bootstrap distribution
    on either side of zero, with the +1 correction so that p is never exactly 0 (its resolution is
    1 / (B + 1)). Pairs where either value is NaN are dropped.
    """
    xa = np.asarray(a, dtype=float).ravel()
    xb = np.asarray(b, dtype=float).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap needs equal lengths, got {len(xa)} and {len(xb)}")
    d = xa - xb
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    delta = float(d.mean())
    means = _resampled_means(d, n_resamples, np.random.default_rng(seed))
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    le = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    ge = (np.count_nonzero(means >= 0) + 1) / (n_resamples + 1)
    return {"delta": delta, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(min(1.0, 2 * min(le, ge)))}


def _keys(rows: Sequence[Mapping[str, float]]) -> Iterator[str]:
    seen = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                yield k


def aggregate(
    rows: Sequence[Mapping[str, float]], n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, dict[str, float]]:
    """``{key: bootstrap_ci(values of key)}`` over per-example metric rows (metrics.json shape).

    Keys are taken in first-seen order over all rows; a row lacking a key (a metric undefined
    for that example, see ``score_example``) contributes nothing to it, like a NaN.
    """
    return {
        k: bootstrap_ci([row.get(k, math.nan) for row in rows], n_resamples=n_resamples, alpha=alpha, seed=seed)
        for k in _keys(rows)
    }
