"""The full-size dry run: every stage compiled on simulated devices, memory per device against a chip.

The end-to-end test runs `launch/pipeline.py --dry_run` on `configs/xlsum_mt5.py:size=small` with 8
simulated devices in a subprocess (the flag must be set before JAX starts), twice: a chip whose HBM
nothing fits (exit status 1, every row 'NO', the error naming the stages) and a real chip (exit 0).
To stay within seconds it shrinks the config through command-line overrides only: the mT5-small
preset becomes the 2-layer mt5_tiny and lengths and batches are short; every stage still compiles
through the same functions. The second run reuses the first's compiled programs (JAX's persistent
cache), so its numbers must equal the first's.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from peft_jax.pipeline import dry_run
from peft_jax.pipeline.dry_run_stages import Stage

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHRINK = ["--config.lang_train.model.name=mt5_tiny", "--config.task_train.model.name=mt5_tiny",
          "--config.lang_train.data.input_length=32", "--config.lang_train.batch_size=8",
          "--config.task_train.data.input_length=32", "--config.task_train.data.target_length=8",
          "--config.task_train.batch_size=8", "--config.decode.max_input_len=32", "--config.decode.max_decode_len=4",
          "--config.decode.batch_size=4"]
STAGES = ["lang/train", "task/train", "select/decode", "evaluate/decode", "evaluate/decode_stack"]


def _dry_run(workdir, chip, cache):
    cmd = [sys.executable, str(ROOT / "launch" / "pipeline.py"),
           "--config=configs/xlsum_mt5.py:size=small,labeled=english+hindi,targets=marathi",
           f"--workdir={workdir}", "--dry_run", f"--config.dry_run_chip={chip}", *SHRINK]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _table_rows(stdout: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("| ")]
    return {r[0]: r for r in rows[1:]}  # rows[0] is the header


def test_dry_run_compiles_every_stage_on_8_devices_and_fails_where_a_stage_does_not_fit(tmp_path):
    cache = tmp_path / "cache"
    small = _dry_run(tmp_path / "tiny_hbm", "v5e@0.000001", cache)
    assert small.returncode == 1, small.stderr[-3000:]
    assert "do(es) not fit in 1e-06 GiB" in small.stderr and "lang/train" in small.stderr.splitlines()[-1]
    rows = _table_rows(small.stdout)
    assert list(rows) == STAGES, small.stdout
    assert {r[-1] for r in rows.values()} == {"NO"}
    assert [rows[s][1] for s in STAGES] == ["8", "8", "1", "1", "1"]  # training on the mesh, decoding on one device

    fits = _dry_run(tmp_path / "v5e", "v5e", cache)
    assert fits.returncode == 0, fits.stderr[-3000:]
    rows = _table_rows(fits.stdout)
    assert list(rows) == STAGES and {r[-1] for r in rows.values()} == {"yes"}
    first = json.loads((tmp_path / "tiny_hbm" / "dry_run.json").read_text())
    second = json.loads((tmp_path / "v5e" / "dry_run.json").read_text())
    assert second["target"] == {"chip": "v5e", "hbm_gib": 16.0, "devices": 8}
    for a, b in zip(first["rows"], second["rows"]):
        assert {k: a[k] for k in dry_run.COLUMNS} == {k: b[k] for k in dry_run.COLUMNS}
        assert a["arguments"] > 0 and a["total"] == (a["arguments"] + a["outputs"] - a["aliased"] + a["temps"]
                                                     + a["code"] + a["held"])
    # The λ grid's G composed modules stay on the device while the sweep decodes: select holds more.
    by_stage = {r["stage"]: r for r in second["rows"]}
    assert by_stage["select/decode"]["held"] > by_stage["evaluate/decode"]["held"] > 0
    assert (tmp_path / "v5e" / "dry_run.md").read_text().count("| evaluate/decode") == 2


def test_memory_row_counts_a_donated_buffer_once():
    n = 1 << 16
    fn = jax.jit(lambda x, y: (x * 2.0, y.sum()), donate_argnums=(0,))
    args = (jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
    row = dry_run.memory_row(Stage("s", "a test", fn, args, 1, held_bytes=1000), hbm_gib=1.0)
    assert row["arguments"] == 2 * 4 * n  # both inputs, as XLA's buffer assignment counts them
    assert row["aliased"] == 4 * n  # x * 2 is written into the donated x
    assert row["outputs"] >= 4 * n + 4
    assert row["total"] == row["arguments"] + row["outputs"] - 4 * n + row["temps"] + row["code"] + 1000
    assert row["fits"] and not dry_run.memory_row(Stage("s", "", fn, args, 1), hbm_gib=1e-6)["fits"]


def test_chip_spec_gives_hbm_and_device_count():
    assert dry_run.parse_chip("v4") == dry_run.Target("v4", 32.0, 4)
    assert dry_run.parse_chip("v5e") == dry_run.Target("v5e", 16.0, 8)
    assert dry_run.parse_chip("V5P:16") == dry_run.Target("v5p", 95.0, 16)
    assert dry_run.parse_chip("h100@40") == dry_run.Target("h100", 40.0, 8)
    assert dry_run.parse_chip("v4", mesh_devices=2) == dry_run.Target("v4", 32.0, 2)


@pytest.mark.parametrize("spec, mesh, message", [
    ("tpu", None, "chip one of ['h100', 'v4', 'v5e', 'v5p']"),
    ("v4:0", None, "device count must be >= 1"),
    ("v4@0", None, "HBM size must be > 0"),
    ("v4:8", 4, "asks for 8 devices but the training meshes use 4"),
])
def test_bad_chip_spec_names_the_problem(spec, mesh, message):
    with pytest.raises(dry_run.DryRunError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dry_run.parse_chip(spec, mesh)
