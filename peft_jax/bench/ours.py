"""The JAX side of the benchmark: peft_jax's own training step, decoding and composition, used as a user would.

Training goes through `peft_jax.train` (mesh, sharded base loading, `jit_train_step` with donation);
decoding through `peft_jax.generate`; composition through `peft_jax.compose.combine`, and, to separate
the arithmetic from the checks and provenance that `combine` adds, through its jitted kernel alone
under `jax.transfer_guard("disallow")` (proof that the kernel makes no host round-trip).
`save_peft_init` writes the PEFT initialisation both sides start from.
"""

from __future__ import annotations

import os
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import peft_jax
from peft_jax import compose, peft
from peft_jax.bench import cases
from peft_jax.bench.worker import Runner
from peft_jax.compose import algebra
from peft_jax.models import safetensors_io
from peft_jax.peft import families
from peft_jax.train import losses, optimizers, partitioning
from peft_jax.train import step as step_lib


# ----------------------------------------------------------------------------------- PEFT init
def _benchmarked(name: str) -> families.Family:
    """The family of a job's `peft` section; only families with a benchmark mapping (`bench_noise`)."""
    family = families.get(name)
    if family.bench_noise is None:
        covered = [n for n in families.names() if families.get(n).bench_noise is not None]
        raise ValueError(f"benchmarks cover {', '.join(covered)}, not {name!r}")
    return family


def peft_config(p: dict, model):
    """Our PEFT config for a job's `peft` section."""
    return _benchmarked(p["family"]).bench_config(p)


def _perturbed(module: peft.PeftModule, seed: int) -> peft.PeftModule:
    """A fresh module moved off its identity init (LoRA B = 0, (IA)^3 = 1), so the first-step check
    exercises the PEFT path itself and a wrong mapping between the two sides cannot hide."""
    key = jax.random.PRNGKey(seed + 1)
    scales = _benchmarked(module.family).bench_noise

    def move(path, x):
        name = peft_jax.tree.path_str(path).rsplit("/", 1)[-1]
        noise = jax.random.normal(jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF), x.shape, x.dtype)
        return x + scales.get(name, 0.0) * noise

    return module.replace(params=jax.tree_util.tree_map_with_path(move, module.params))


def save_peft_init(spec: dict) -> None:
    """Writes the job's initial PEFT module: ours (peft.save) and HF peft's format, from one init."""
    root = spec["peft_init"]
    if os.path.isfile(os.path.join(root, cases.DONE_MARKER)):
        return
    model, _ = peft_jax.load_pretrained(spec["checkpoint"])
    module = peft.init(model, peft_config(spec["peft"], model), jax.random.PRNGKey(spec["seed"]))
    module = _perturbed(module, spec["seed"])
    peft.save(os.path.join(root, "ours"), module, overwrite=True)
    hf_dir = os.path.join(root, "hf")
    family = families.get(module.family)
    if family.hf_peft_type:  # an adapter directory HF peft loads itself
        peft.export_hf(hf_dir, module, spec["checkpoint"], model, overwrite=True)
    else:  # a state dict the reference side loads into a fresh HF peft model
        os.makedirs(hf_dir, exist_ok=True)
        tensors = family.hf_state(module, model.hf_module_names())
        safetensors_io.write(os.path.join(hf_dir, "peft_init.safetensors"), tensors)
    open(os.path.join(root, cases.DONE_MARKER), "w").close()


# ------------------------------------------------------------------------------------ training
class _TrainState:
    """The jitted step and the state it threads through (module and optimizer state are donated)."""

    def __init__(self, spec: dict):
        sizes = spec.get("mesh") or {"data": 1, "fsdp": 1, "model": 1}
        self.mesh = partitioning.make_mesh(sizes, jax.devices()[: int(np.prod(list(sizes.values())))])
        rules = partitioning.DEFAULT_RULES
        self.model, self.params = partitioning.load_base(spec["checkpoint"], self.mesh, rules, spec["dtype"])
        module = peft.load(os.path.join(spec["peft_init"], "ours"))
        peft_sh = partitioning.peft_shardings(self.model, module, self.mesh, rules)
        self.module = jax.device_put(module, peft_sh)
        optimizer, _ = optimizers.make_optimizer(ml_collections.ConfigDict(spec["optimizer"]), total_steps=10**6)
        self.opt_state = step_lib.init_opt_state(optimizer, self.module, self.mesh)
        repl = partitioning.replicated(self.mesh)
        batch_sh = jax.sharding.NamedSharding(self.mesh, partitioning.batch_spec(rules))
        self.step_fn = step_lib.jit_train_step(
            model=self.model, optimizer=optimizer, peft_sharding=peft_sh,
            opt_sharding=step_lib.shardings_of(self.opt_state), params_sharding=step_lib.shardings_of(self.params),
            batch_sharding=batch_sh, scalar_sharding=repl)
        # The reference trains decoder-only models as causal LMs and encoder-decoders on (input, target) pairs.
        objective = "causal_lm" if "causal_lm" in self.model.OBJECTIVES else "seq2seq"
        host = losses.prepare_batch(cases.train_batch(spec), self.model, objective, self.model.config.pad_id)
        self.batch = partitioning.global_batch(host, self.mesh, spec["batch_size"], rules)
        self.rng = jax.device_put(jax.random.PRNGKey(spec["seed"]), repl)
        # Compiled before the first step and the compiler's memory released, as the training loop does.
        step_lib.compile_step(self.step_fn, self.module, self.opt_state, self.params, self.batch, self.rng)

    def step(self) -> float:
        self.module, self.opt_state, metrics = self.step_fn(self.module, self.opt_state, self.params, self.batch,
                                                            self.rng)
        return float(metrics["loss"])  # reading the loss waits for the step to finish


def _train_runner(spec: dict) -> Runner:
    s = _TrainState(spec)
    return Runner(check=lambda: {"losses": [s.step(), s.step()], "devices": len(s.mesh.devices.flat)},
                  run=lambda: {"loss": s.step()})


# ------------------------------------------------------------------------------------ decoding
def _decode_runner(spec: dict) -> Runner:
    model, params = peft_jax.load_pretrained(spec["checkpoint"], compute_dtype=spec["dtype"])
    batch = {"encoder_input_tokens": jnp.asarray(cases.decode_inputs(spec))}

    def generate() -> dict:
        out = peft_jax.generate(model, params, batch, method=spec["method"], max_decode_len=spec["max_decode_len"],
                                num_beams=spec["num_beams"], length_penalty=spec["length_penalty"])
        return jax.device_get(out)

    return Runner(check=lambda: {"tokens": np.asarray(generate()["tokens"]).tolist()},
                  run=lambda: {"tokens": int(generate()["lengths"].sum())})


# --------------------------------------------------------------------------------- composition
def lora_modules(spec: dict) -> list[peft.PeftModule]:
    """N random LoRA modules with the job's (mT5-xxl) target shapes, created on the device."""
    paths = cases.compose_paths(spec)
    r, d_in, d_out = spec["rank"], spec["d_in"], spec["d_out"]
    config = peft.LoraConfig(targets=".*", rank=r, alpha=2.0 * r)
    # One small program per leaf shape, called per leaf: a single jit over all 576 leaves of a module
    # would take gigabytes to compile and pollute the process's memory before anything is measured.
    normal = jax.jit(lambda key, shape: 0.02 * jax.random.normal(key, shape), static_argnums=1)

    def one(key):
        keys = jax.random.split(key, 2 * len(paths))
        return peft_jax.tree.unflatten({p: {"lora_a": normal(keys[2 * i], (d_in, r)),
                                            "lora_b": normal(keys[2 * i + 1], (r, d_out))}
                                        for i, p in enumerate(paths)})

    key = jax.random.PRNGKey(spec["seed"])
    return [peft.PeftModule(params=jax.block_until_ready(one(jax.random.fold_in(key, i))), config=config)
            for i in range(spec["n"])]


def _nbytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _compose_runner(spec: dict) -> Runner:
    modules = lora_modules(spec)
    weights = [1.0 / spec["n"]] * spec["n"]
    strategy, options = spec["strategy"], spec["options"]
    # The jitted arithmetic alone: the same plan and kernel `combine` runs, minus checks and fingerprints.
    plan, extras = algebra._plan(modules, strategy, options)
    w, inputs = jnp.asarray(weights, jnp.float32), [m.params for m in modules]

    def kernel():
        with jax.transfer_guard("disallow"):
            return jax.block_until_ready(algebra._compose(inputs, w, extras, plan=plan))

    def run() -> dict:
        t0 = time.perf_counter()
        jax.block_until_ready(compose.combine(modules, weights, strategy, **options).params)
        t1 = time.perf_counter()
        kernel()
        return {"combine_s": t1 - t0, "kernel_s": time.perf_counter() - t1}

    def check() -> dict:
        # XLA's own account of what the kernel allocates beyond its inputs (temporaries + result): exact,
        # unlike RSS, where the allocator's cached pages from earlier calls hide new allocations.
        compiled = algebra._compose.lower(inputs, w, extras, plan=plan).compile().memory_analysis()
        out = kernel()[0]
        return {"in_bytes": _nbytes(inputs), "out_bytes": _nbytes(out), "rank": plan.fact("rank"),
                "kernel_bytes": int(compiled.temp_size_in_bytes + compiled.output_size_in_bytes)}

    return Runner(check=check, run=run)


# ------------------------------------------------------------------------------ machine probes
def _machine_runner(spec: dict) -> Runner:
    """An n x n float32 matmul (FLOP/s) and a streaming pass over `mbytes` (bandwidth), timed apart."""
    n, size = spec["n"], spec["mbytes"] * 2**20 // 4
    ka, kb = jax.random.split(jax.random.PRNGKey(spec["seed"]))
    a, b = jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    # Donated, so the stream reads and writes one resident buffer (no fresh pages to fault in).
    stream = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    state = {"x": jax.block_until_ready(stream(jnp.ones((size,), jnp.float32)))}

    def run() -> dict:
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        t1 = time.perf_counter()
        state["x"] = jax.block_until_ready(stream(state["x"]))
        return {"matmul_s": t1 - t0, "copy_s": time.perf_counter() - t1}

    return Runner(check=lambda: {"flops": 2.0 * n**3, "bytes": 2.0 * size * 4}, run=run)


_RUNNERS = {"train": _train_runner, "decode": _decode_runner, "compose": _compose_runner,
            "machine": _machine_runner}


def make_runner(spec: dict) -> Runner:
    """Our runner of a job."""
    if spec["kind"] not in _RUNNERS:
        raise ValueError(f"job {spec['name']}: no implementation of kind {spec['kind']!r}")
    return _RUNNERS[spec["kind"]](spec)
