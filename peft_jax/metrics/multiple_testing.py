"""Adjusting p-values across a table of comparisons (every recipe × language against task_only).

  holm  Holm (1979) step-down: controls the family-wise error rate (the chance of any false "better")
  bh    Benjamini & Hochberg (1995) step-up: controls the false discovery rate (the expected share of
        false "better"s among those claimed)

Both return adjusted p-values in the input order, so `adjusted < 0.05` is the decision at level 0.05.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METHODS = ("holm", "bh")


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values of `p_values` (each in [0, 1]) under `method` ('holm' or 'bh')."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":  # max over j <= i of (m - j) p_(j), capped at 1
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    else:  # min over j >= i of m p_(j) / j, capped at 1
        adjusted = np.minimum.accumulate((m * ranked / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()
