"""Bootstrap confidence intervals and paired significance tests over per-example scores.

Percentile bootstrap (Efron & Tibshirani 1993) and the paired bootstrap test of
Koehn (2004): examples are resampled with replacement, jointly for both systems
in the paired test. Resampling is vectorised in NumPy (float64) and drawn in
row chunks so memory stays bounded for large test sets; results depend only on
``seed``, not on the chunking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# At most this many resampled indices are held in memory at once.
_MAX_CHUNK_ELEMENTS = 1 << 22


def _as_scores(scores: Sequence[float], name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float64 array, or a ValueError naming ``name``."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: nothing to resample")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_options(num_samples: int, confidence: float) -> None:
    """Raises ValueError for a non-positive sample count or a confidence outside (0, 1)."""
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _resampled_means(values: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Means of ``num_samples`` resamples of ``values``: one row of n indices each."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    rows = max(1, _MAX_CHUNK_ELEMENTS // n)
    means = [values[idx].mean(axis=1) for idx in _index_chunks(rng, n, num_samples, rows)]
    return np.concatenate(means)


def _index_chunks(rng: np.random.Generator, n: int, num_samples: int,
                  rows: int) -> Iterator[np.ndarray]:
    """Index matrices of at most ``rows`` resamples, drawn in order from ``rng``."""
    for start in range(0, num_samples, rows):
        yield rng.integers(0, n, size=(min(rows, num_samples - start), n))


def _interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the bootstrap distribution ``means``."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(scores: Sequence[float], num_samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``scores`` and its percentile-bootstrap confidence interval.

    Returns:
      (mean, low, high): the sample mean and the ``(1-confidence)/2`` and
      ``1-(1-confidence)/2`` quantiles of the means of ``num_samples`` resamples.
    """
    values = _as_scores(scores, "scores")
    _check_options(num_samples, confidence)
    low, high = _interval(_resampled_means(values, int(num_samples), seed), confidence)
    return float(values.mean()), low, high


ALTERNATIVES = ("two-sided", "one-sided")


def _p_value(delta: float, deltas: np.ndarray, alternative: str) -> float:
    """The bootstrap p-value of the observed `delta` given the resampled `deltas`.

    two-sided: the resampled deltas centred on the observed one estimate the null distribution
    (Efron & Tibshirani 1993, §16.4); p = share with |δ* − δ| >= |δ|.
    one-sided: Koehn (2004)'s share of resamples whose delta does not have the observed sign.
    """
    if delta == 0:
        return 1.0
    if alternative == "two-sided":
        return float(np.mean(np.abs(deltas - delta) >= abs(delta)))
    return float(np.mean(deltas <= 0)) if delta > 0 else float(np.mean(deltas >= 0))


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float],
                     num_samples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, alternative: str = "two-sided") -> dict[str, float]:
    """Paired bootstrap test of system A against system B on the same examples.

    Returns:
      {"delta": mean(a) - mean(b), "low"/"high": percentile interval of the
      resampled delta, "p_value": see `alternative` (1.0 when delta == 0)}.
      alternative="two-sided" (default) tests delta != 0: the share of resampled
      deltas, centred on the observed delta, at least as far from 0 as it is;
      "one-sided" is the share of resamples whose delta does not have the sign
      of the observed delta (Koehn 2004), a test in the observed direction.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.shape[0]} (scores_a) vs "
                         f"{b.shape[0]} (scores_b)")
    _check_options(num_samples, confidence)
    delta = float(a.mean() - b.mean())
    deltas = _resampled_means(a - b, int(num_samples), seed)
    low, high = _interval(deltas, confidence)
    return {"delta": delta, "p_value": _p_value(delta, deltas, alternative), "low": low, "high": high}
