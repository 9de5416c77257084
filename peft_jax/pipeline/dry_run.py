"""A full-size dry run: every jitted stage compiled ahead of time, with XLA's per-device memory.

  python launch/pipeline.py --config=configs/xlsum_mt5.py:size=xl --workdir=DIR --dry_run \\
      --config.dry_run_chip=v5e

No weights are loaded and no data is read: each stage's program (`dry_run_stages`) is lowered with
abstract inputs of the config's full sizes and compiled for a mesh of simulated devices
(`--xla_force_host_platform_device_count`). The compiled program's own memory analysis gives the bytes
one device needs (arguments, outputs, temporaries, generated code, minus outputs that reuse donated
arguments); the table compares them with the HBM of the targeted chip and the run fails (exit status 1)
when a stage does not fit. Results go to DIR/dry_run.md and DIR/dry_run.json.

`dry_run_chip` is `<chip>[:<devices>][@<GiB>]`: a chip of `CHIPS`, optionally the number of devices
(default: the training meshes' size when they fix it, else the chip's devices per host) and an HBM
size in GiB that replaces the chip's (e.g. `v5e:16`, `h100@40`).

The numbers come from XLA's CPU compiler. Sharding, shapes and dtypes are the real run's, so arguments
and outputs are exact; temporaries depend on the backend's fusion and scheduling and are an estimate of
what the TPU / GPU compiler allocates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time

import jax

from peft_jax.fileio import write_text
from peft_jax.pipeline import dry_run_stages, experiment, lambdas

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """An accelerator: its name, HBM per device (GiB) and devices on one host."""

    name: str
    hbm_gib: float
    devices_per_host: int


CHIPS = {"v4": Chip("TPU v4", 32, 4), "v5e": Chip("TPU v5e", 16, 8), "v5p": Chip("TPU v5p", 95, 4),
         "h100": Chip("NVIDIA H100", 80, 8)}
_SPEC = re.compile(r"^(?P<chip>[a-z0-9]+)(:(?P<devices>\d+))?(@(?P<hbm>\d+(\.\d*)?|\.\d+))?$")


class DryRunError(ValueError):
    """A dry-run setting that cannot be used (unknown chip, device count, already started backend)."""


class DoesNotFitError(RuntimeError):
    """At least one stage needs more memory per device than the chip has."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The chip a dry run checks against, and how many devices it simulates."""

    chip: str
    hbm_gib: float
    devices: int


def parse_chip(spec: str, mesh_devices: int | None = None) -> Target:
    """The `Target` of a `dry_run_chip` value; `mesh_devices` is the size the training meshes fix, if any."""
    m = _SPEC.match(str(spec).strip().lower())
    if m is None or m["chip"] not in CHIPS:
        raise DryRunError(f"dry_run_chip={spec!r}: expected <chip>[:<devices>][@<GiB>] with chip one of "
                          f"{sorted(CHIPS)}, e.g. 'v5e', 'v4:8', 'h100@40'")
    chip = CHIPS[m["chip"]]
    devices = int(m["devices"]) if m["devices"] else mesh_devices or chip.devices_per_host
    if devices < 1:
        raise DryRunError(f"dry_run_chip={spec!r}: the device count must be >= 1")
    if mesh_devices and devices != mesh_devices:
        raise DryRunError(f"dry_run_chip={spec!r} asks for {devices} devices but the training meshes use "
                          f"{mesh_devices}; drop ':{devices}' or change the mesh")
    hbm = float(m["hbm"]) if m["hbm"] else chip.hbm_gib
    if not hbm > 0:
        raise DryRunError(f"dry_run_chip={spec!r}: the HBM size must be > 0 GiB")
    return Target(m["chip"], hbm, devices)


def mesh_devices(config) -> int | None:
    """The device count the training meshes fix (None when an axis is -1, i.e. 'all devices')."""
    sizes = set()
    for section in ("lang_train", "task_train"):
        shape = [int(v) for v in dict(config[section].mesh).values()]
        if -1 not in shape:
            sizes.add(math.prod(shape))
    if len(sizes) > 1:
        raise DryRunError(f"lang_train.mesh and task_train.mesh use different device counts {sorted(sizes)}")
    return sizes.pop() if sizes else None


def target_of(config) -> Target:
    """The config's dry-run target."""
    return parse_chip(config.dry_run_chip, mesh_devices(config))


# Nothing compiled by a dry run is executed, so the CPU backend may skip optimising machine code; buffer
# assignment (what the memory analysis reports) happens before it and does not change.
_COMPILE_ONLY_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def simulate_devices(n: int) -> None:
    """Makes JAX start on the CPU with `n` devices; call before anything starts a JAX backend."""
    ours = (f"--xla_force_host_platform_device_count={n}", *_COMPILE_ONLY_FLAGS)
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in
            {o.split("=")[0] for o in ours}]
    os.environ["XLA_FLAGS"] = " ".join([*keep, *ours])
    jax.config.update("jax_platforms", "cpu")
    if len(jax.devices()) != n:  # a backend that started before the flag was set keeps its devices
        raise DryRunError(f"the dry run needs {n} simulated devices but JAX already started with "
                          f"{len(jax.devices())}; run it in a fresh process (launch/pipeline.py --dry_run)")


# ------------------------------------------------------------------------------- memory
def memory_row(stage: dry_run_stages.Stage, hbm_gib: float) -> dict:
    """Compiles `stage` and reads XLA's memory analysis of one device of it (bytes)."""
    start = time.perf_counter()
    stats = stage.lower().compile().memory_analysis()
    row = {"stage": stage.name, "what": stage.what, "devices": stage.devices,
           "compile_seconds": round(time.perf_counter() - start, 1),
           "arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes, "temps": stats.temp_size_in_bytes,
           "code": stats.generated_code_size_in_bytes, "held": stage.held_bytes}
    # Outputs written into donated argument buffers are counted once.
    row["total"] = (row["arguments"] + row["outputs"] - row["aliased"] + row["temps"] + row["code"]
                    + row["held"])
    row["fits"] = row["total"] <= hbm_gib * GIB
    return row


COLUMNS = ("arguments", "outputs", "aliased", "temps", "code", "held", "total")


def _gib(n: int) -> str:
    """Bytes as GiB: two decimals, or three significant digits below 0.01 GiB (tiny test models)."""
    return f"{n / GIB:.2f}" if n >= 0.01 * GIB or n == 0 else f"{n / GIB:.3g}"


def table(rows: list[dict], target: Target) -> str:
    """The Markdown table of per-device memory (GiB) against the target's HBM."""
    head = ["stage", "devices", *COLUMNS, f"fits {target.chip} ({target.hbm_gib:g} GiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["stage"], str(r["devices"]), *(_gib(r[c]) for c in COLUMNS), "yes" if r["fits"] else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(target: Target, rows: list[dict]) -> str:
    stages = "\n".join(f"- `{r['stage']}`: {r['what']}" for r in rows)
    return (f"# Dry run: per-device memory\n\n{target.devices} simulated devices, checked against "
            f"{CHIPS[target.chip].name} ({target.hbm_gib:g} GiB HBM per device). GiB per device from XLA's "
            f"memory analysis of each compiled stage; `held`: arrays the stage keeps on the device outside "
            f"the program (loaded module files, the λ grid).\n\n{table(rows, target)}\n\n{stages}\n")


# ---------------------------------------------------------------------------------- run
def _module_counts(config) -> dict[str, int]:
    """The language and task module files the decoding stages hold, and the rows of the largest λ grid."""
    swept = lambdas.recipes_with_lambda(config) if config.lambda_protocol != "fixed" else []
    # The languages the pipeline trains a language module for (source, targets, λ's pseudo-targets).
    return {"lang": len(experiment._languages(config)),  # pylint: disable=protected-access
            "task": len(config.labeled_languages),
            "grid": max((len(lambdas.grid(config, r)) for r in swept), default=0)}


def run(config, workdir: str, log=print) -> list[dict]:
    """Compiles every stage, prints and writes the table; raises DoesNotFitError if a stage does not fit."""
    target = target_of(config)
    devices = jax.devices()
    if len(devices) < target.devices:
        raise DryRunError(f"the dry run targets {target.devices} devices but JAX has {len(devices)}")
    lambdas.check(config)
    stages = dry_run_stages.all_stages(config, devices[:target.devices], _module_counts(config))
    rows = []
    for stage in stages:
        rows.append(memory_row(stage, target.hbm_gib))
        log(f"compiled {stage.name} in {rows[-1]['compile_seconds']:.0f} s: {stage.what}")
    report = _report(target, rows)
    os.makedirs(workdir, exist_ok=True)
    write_text(os.path.join(workdir, "dry_run.md"), report)
    write_text(os.path.join(workdir, "dry_run.json"),
               json.dumps({"target": dataclasses.asdict(target), "rows": rows}, indent=1))
    log("\n" + report)
    failing = [r["stage"] for r in rows if not r["fits"]]
    if failing:
        raise DoesNotFitError(f"{', '.join(failing)} do(es) not fit in {target.hbm_gib:g} GiB per device of "
                              f"{CHIPS[target.chip].name} (table above and in {workdir}/dry_run.md)")
    return rows
