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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import peft_jax
from peft_jax import compose, peft
from peft_jax.bench import cases
from peft_jax.compose import algebra
from peft_jax.models import hf as hf_models
from peft_jax.models import safetensors_io
from peft_jax.train import losses, optimizers, partitioning
from peft_jax.train import step as step_lib


class Runner(NamedTuple):
    """What the worker drives: `check()` once (before timing), then `run()` per repetition."""

    check: Callable[[], dict]
    run: Callable[[], dict]


# ----------------------------------------------------------------------------------- PEFT init
def peft_config(p: dict, model):
    """Our PEFT config for a job's `peft` section."""
    if p["family"] == "lora":
        return peft.LoraConfig(targets=p["targets"], rank=p["rank"], alpha=p["alpha"])
    if p["family"] == "prompt":
        return peft.PromptConfig(length=p["length"], init="random", init_scale=p["init_scale"])
    if p["family"] == "ia3":
        return peft.IA3Config(targets=p["targets"], feedforward=p["feedforward"])
    raise ValueError(f"benchmarks cover lora, prompt and ia3, not {p['family']!r}")


def _perturbed(module: peft.Module, seed: int) -> peft.Module:
    """A fresh module moved off its identity init (LoRA B = 0, (IA)^3 = 1), so the first-step check
    exercises the PEFT path itself and a wrong mapping between the two sides cannot hide."""
    key = jax.random.PRNGKey(seed + 1)

    def move(path, x):
        name = peft_jax.tree.path_str(path).rsplit("/", 1)[-1]
        noise = jax.random.normal(jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF), x.shape, x.dtype)
        return x + {"lora_b": 0.02, "ia3_in": 0.1, "ia3_out": 0.1}.get(name, 0.0) * noise

    return module.replace(params=jax.tree_util.tree_map_with_path(move, module.params))


def _hf_names(model) -> dict[str, str]:
    """{our kernel module path: HF module name}, from the table that loads HF checkpoints."""
    names = hf_models.t5_names(model.config) if model.family == "encoder_decoder" else \
        hf_models.decoder_names(model.config)
    return {ours[: -len("/kernel")]: hf[0][: -len(".weight")] for ours, hf, _ in names if ours.endswith("/kernel")}


def _hf_tensors(module: peft.Module, model) -> dict[str, np.ndarray]:
    """HF peft state-dict names and layouts of a prompt or (IA)^3 module."""
    if module.family == "prompt":
        return {"prompt_embeddings": np.asarray(module.params["prompt"]["embedding"], np.float32)}
    table, out = _hf_names(model), {}
    for path, node in peft_jax.tree.flatten(module.params, is_leaf=lambda x: isinstance(x, dict) and (
            "ia3_in" in x or "ia3_out" in x)).items():
        # HF peft keeps (IA)^3 vectors as [out, 1] (scales the output) or [1, in] (feed-forward input).
        vec = np.asarray(node.get("ia3_out", node.get("ia3_in")), np.float32)
        out[f"base_model.model.{table[path]}.ia3_l"] = vec[:, None] if "ia3_out" in node else vec[None, :]
    return out


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
    if module.family == "lora":
        peft.export_hf(hf_dir, module, spec["checkpoint"], model, overwrite=True)
    else:
        os.makedirs(hf_dir, exist_ok=True)
        safetensors_io.write(os.path.join(hf_dir, "peft_init.safetensors"), _hf_tensors(module, model))
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
        objective = "seq2seq" if self.model.family == "encoder_decoder" else "causal_lm"
        host = losses.prepare_batch(cases.train_batch(spec), self.model.family, objective, self.model.config.pad_id)
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
def lora_modules(spec: dict) -> list[peft.Module]:
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
    return [peft.Module(params=jax.block_until_ready(one(jax.random.fold_in(key, i))), config=config)
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
        return {"in_bytes": _nbytes(inputs), "out_bytes": _nbytes(out), "rank": plan.rank,
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
