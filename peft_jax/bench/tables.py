"""The results table: medians per case and metric, side by side, with ratio = ours / reference.

Training gets model FLOP utilisation against the machine's measured matmul peak; composition is set
against its floors (bytes read + written over the measured copy bandwidth, and the result's size).
"""

from __future__ import annotations

import dataclasses
import statistics

from peft_jax.bench import cases

SIDES = ("ours", "reference")


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    case: str
    metric: str
    ours: float | None
    reference: float | None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    def to_dict(self) -> dict:
        return {"case": self.case, "metric": self.metric, "ours": self.ours, "reference": self.reference,
                "ratio": self.ratio}


def _median(result: dict | None, fn) -> float | None:
    if result is None:
        return None
    return statistics.median(fn(r) for r in result["reps"])


def _pair(job: dict, results: dict, metric: str, fn, reference: float | None = None) -> Row:
    ref = _median(results.get("reference"), fn) if reference is None else reference
    return Row(job["name"], metric, _median(results.get("ours"), fn), ref)


def _peak(results: dict, side: str) -> float | None:
    return results[side]["done"]["peak_rss_mb"] if side in results else None


def _train_rows(job: dict, results: dict, peak_gflops: float | None) -> list[Row]:
    tokens, flops = cases.train_tokens(job), cases.train_flops(job)
    rows = [_pair(job, results, "tokens_per_s", lambda r: tokens / r["seconds"]),
            _pair(job, results, "step_s", lambda r: r["seconds"]),
            Row(job["name"], "peak_rss_mb", _peak(results, "ours"), _peak(results, "reference"))]
    if peak_gflops:
        mfu = lambda r: flops / r["seconds"] / (peak_gflops * 1e9)
        rows.append(_pair(job, results, "mfu", mfu))
    return rows


def _compose_rows(job: dict, results: dict, bandwidth: float | None) -> list[Row]:
    """Composition against its floors: time vs (bytes read + written) / bandwidth, memory vs the result's size."""
    ours = results["ours"]
    check = ours["ready"]["check"]
    floor_s = (check["in_bytes"] + check["out_bytes"]) / bandwidth if bandwidth else None
    mib = 2.0**20
    return [_pair(job, results, "combine_s", lambda r: r["combine_s"], floor_s),
            _pair(job, results, "kernel_s", lambda r: r["kernel_s"], floor_s),
            Row(job["name"], "kernel_mb", check["kernel_bytes"] / mib, check["out_bytes"] / mib),
            Row(job["name"], "peak_rss_mb", _peak(results, "ours"), (check["in_bytes"] + check["out_bytes"]) / mib)]


def _decode_rows(job: dict, results: dict) -> list[Row]:
    return [_pair(job, results, "tokens_per_s", lambda r: r["tokens"] / r["seconds"]),
            _pair(job, results, "batch_s", lambda r: r["seconds"]),
            Row(job["name"], "peak_rss_mb", _peak(results, "ours"), _peak(results, "reference"))]


def _machine_rows(results: dict) -> tuple[Row, Row]:
    """The machine's matmul GFLOP/s and copy GB/s, as each library reaches them."""
    work = results["ours"]["ready"]["check"]
    flops = Row("machine/matmul_f32", "gflops", *(_median(results[s], lambda r: work["flops"] / r["matmul_s"] / 1e9)
                                                    for s in SIDES))
    copy = Row("machine/copy", "gb_per_s", *(_median(results[s], lambda r: work["bytes"] / r["copy_s"] / 1e9)
                                              for s in SIDES))
    return flops, copy


def rows_of(jobs: list[dict], results: dict[str, dict]) -> list[Row]:
    """The table: medians per metric and side; MFU from the machine's matmul peak, composition vs its floor."""
    rows: list[Row] = []
    peak = bandwidth = None
    machine = next((j for j in jobs if j["kind"] == "machine"), None)
    if machine:
        flops, copy = _machine_rows(results[machine["name"]])
        # The machine's limits, whichever library reaches them.
        peak, bandwidth = max(flops.ours, flops.reference), 1e9 * max(copy.ours, copy.reference)
        rows += [flops, copy]
    for job in jobs:
        res = results[job["name"]]
        if job["kind"] == "train":
            rows += _train_rows(job, res, peak)
        elif job["kind"] == "decode":
            rows += _decode_rows(job, res)
        elif job["kind"] == "compose":
            rows += _compose_rows(job, res, bandwidth)
    return rows


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def format_table(rows: list[Row]) -> str:
    """Markdown table of the rows (ratio = ours / reference)."""
    lines = ["| case | metric | ours | reference | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.metric} | {_fmt(r.ours)} | {_fmt(r.reference)} | {_fmt(r.ratio)} |" for r in rows]
    return "\n".join(lines)
