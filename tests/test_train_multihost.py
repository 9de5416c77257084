"""Two local processes joined by jax.distributed (gloo CPU collectives) train like one process."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from peft_jax import peft
from peft_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_train_sharding import tiny_config  # noqa: E402  (same tiny run as the sharding test)

# Each process: 2 CPU devices; the global mesh (fsdp=2, model=2) splits the base and the batch across processes.
WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sys.path.insert(0, {tests!r})
    from test_train_sharding import tiny_config
    from peft_jax.train import loop
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = tiny_config("palm_tiny", "lora", data=1, fsdp=2, model_axis=2)
    d = config.distributed
    d.enabled, d.coordinator_address, d.num_processes, d.process_id = True, f"127.0.0.1:{{port}}", 2, pid
    d.cpu_collectives = "gloo"
    import jax
    result = loop.train(config, workdir)
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    print("PROCESS-OK", pid, result.metrics["loss"])
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_params_of_one_process(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = WORKER.format(tests=str(ROOT / "tests"))
    port = str(_free_port())
    workers = [subprocess.Popen([sys.executable, "-c", script, port, str(i), str(tmp_path / "two")], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for i, (w, (out, err)) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0 and f"PROCESS-OK {i}" in out, f"process {i}:\n{err[-4000:]}"
    # Process 0 alone wrote the metrics and the final module; the checkpoint holds both data positions.
    assert (tmp_path / "two" / "final_module").is_file()
    data_dir = tmp_path / "two" / "checkpoints" / "3" / "data"
    assert {p.name for p in data_dir.glob("process_*.json")} == {"process_0-of-2.json", "process_1-of-2.json"}
    one = loop.train(tiny_config("palm_tiny", "lora"), tmp_path / "one")
    two = peft.load(tmp_path / "two" / "final_module", base_params=one.params)  # same base fingerprint
    fresh = peft.init(one.model, one.module.config, jax.random.PRNGKey(0))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(one.module.params), jax.tree.leaves(fresh.params))) > 1e-3
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.module.params)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
