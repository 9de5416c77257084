"""The check that both sides of a job compute the same thing before either is timed."""

from __future__ import annotations

from peft_jax.bench import cases
from peft_jax.bench.processes import BenchmarkError


def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


def _check_losses(job: dict, ours: list[float], ref: list[float], tol: dict) -> None:
    """Training: the first losses (before and after an optimizer step) agree within tolerance."""
    for i, (a, b) in enumerate(zip(ours, ref)):
        if not _close(a, b, tol["loss_atol"], tol["loss_rtol"]):
            raise BenchmarkError(f"job {job['name']}: training loss of step {i + 1} differs: ours {a:.6f}, "
                                 f"reference {b:.6f} (tolerance {tol['loss_atol']} + {tol['loss_rtol']} * |ref|)")


def _check_tokens(job: dict, ours: list[list[int]], ref: list[list[int]]) -> None:
    """Decoding: the same tokens in every row, up to and including EOS."""
    # What follows EOS is padding, which transformers fills with EOS and we with pad.
    cut = lambda rows: [r[:n] for r, n in zip(rows, cases.generated_lengths(rows, job["model"].get("eos_id", 1)))]
    for row, (a, b) in enumerate(zip(cut(ours), cut(ref))):
        if a != b:
            pos = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            raise BenchmarkError(f"job {job['name']}: decoded tokens of row {row} differ from position {pos}: "
                                 f"ours {a[pos:pos + 5]}..., reference {b[pos:pos + 5]}...")


def check_agreement(job: dict, checks: dict[str, dict], tol: dict) -> None:
    """Raises BenchmarkError unless both sides computed the same thing (losses within tolerance, equal tokens)."""
    if len(checks) < 2:
        return
    ours, ref = checks["ours"], checks["reference"]
    if job["kind"] == "train":
        _check_losses(job, ours["losses"], ref["losses"], tol)
    if job["kind"] == "decode":
        _check_tokens(job, ours["tokens"], ref["tokens"])
