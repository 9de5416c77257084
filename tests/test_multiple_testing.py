"""Adjusted p-values across a results table: Holm against a direct float64 loop of its definition, BH against
scipy's implementation."""

import numpy as np
import pytest
import scipy.stats

from peft_jax.metrics.multiple_testing import adjust_p_values


def _holm_reference(p):
    """Holm's adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)) over the sorted p-values, by loops."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_its_definition_and_bh_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 4), rng.uniform(0, 1, 8), [0.5, 0.5]]).tolist()  # ties included
    assert adjust_p_values(p, "holm") == pytest.approx(_holm_reference(p), abs=1e-15)
    assert adjust_p_values(p, "bh") == pytest.approx(scipy.stats.false_discovery_control(p, method="bh").tolist(),
                                                     abs=1e-15)


def test_adjusted_p_values_are_never_below_the_raw_ones_and_holm_is_the_stricter():
    p = [0.001, 0.01, 0.02, 0.04, 0.3]
    holm, bh = adjust_p_values(p, "holm"), adjust_p_values(p, "bh")
    assert all(h >= b >= raw for h, b, raw in zip(holm, bh, p))
    assert adjust_p_values([], "holm") == []


@pytest.mark.parametrize("p, method, message", [([0.1, 1.2], "holm", r"must lie in \[0, 1\]"),
                                                ([0.1, float("nan")], "bh", r"must lie in \[0, 1\]"),
                                                ([0.1], "bonferroni", "method must be one of")])
def test_bad_p_values_or_methods_are_refused(p, method, message):
    with pytest.raises(ValueError, match=message):
        adjust_p_values(p, method)
