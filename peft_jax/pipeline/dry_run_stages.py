"""The jitted programs of every pipeline stage, lowered with abstract full-size inputs (nothing loaded).

Each stage is the function a real run jits, bound the way the run binds it, and the arguments it
receives described as `jax.ShapeDtypeStruct`s carrying the shardings the run gives them:

  lang/train, task/train  `train.step.jit_train_step` on the stage's mesh and logical-axis rules, the
                          module from `peft.init`, the optimizer of `train.optimizers`, the batch of the
                          stage's own feature function (`train.inputs`) at its global batch size
  select/decode           `decode.generate`'s jitted loop on one decode batch with per-example module
                          rows (a batched module, `peft.batching.batch`), as the λ sweep decodes its grid
  evaluate/decode         the same loop with one composed module (task_only, add, weighted, analogy,
                          multi_source under `param` share the task module's structure)
  evaluate/decode_stack   the same loop with the language and task modules applied together

Decoding runs where `pipeline.experiment.Context` puts it: the base loaded by `load_pretrained` without
shardings, i.e. whole on the first device, at `load_pretrained`'s compute dtype.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, SingleDeviceSharding

from peft_jax import peft as peft_lib
from peft_jax.data import tokenizers
from peft_jax.decode import api as decode_api
from peft_jax.decode.settings import make_settings
from peft_jax.evaluation import generate_options
from peft_jax.models import get_model
from peft_jax.peft import batching, families
from peft_jax.train import config_lib, inputs, loop, losses, optimizers, partitioning, sparse
from peft_jax.train import step as step_lib

# `pipeline.experiment.Context` loads the base with `load_pretrained`'s default compute dtype.
DECODE_DTYPE = "float32"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One program to compile: the jitted function, its abstract arguments, and what it stands for."""

    name: str
    what: str
    fn: Callable  # a jax.jit-wrapped function
    args: tuple
    devices: int  # devices the program runs on
    held_bytes: int = 0  # per-device bytes the run keeps on the device outside this program

    def lower(self):
        """`fn` lowered for `args` (traced, not run)."""
        return self.fn.lower(*self.args)


def _abstract(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings` (a matching tree)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def nbytes(tree) -> int:
    """Total bytes of the arrays (or structs) of a tree."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------ batches
class ShapeTokenizer(tokenizers.Tokenizer):
    """A tokenizer with the model's special ids that encodes any text as a long run of one ordinary id.

    The feature functions pad and trim to fixed lengths, so one such example gives the exact keys,
    shapes and dtypes of a real batch row without reading a vocabulary or any data.
    """

    def __init__(self, model, extra_ids: int, length: int):
        c = model.config
        self.vocab_size, self.base_vocab_size, self.extra_ids = c.vocab_size, c.vocab_size - extra_ids, extra_ids
        self.pad_id, self.eos_id = c.pad_id, c.eos_id
        self.bos_id, self.unk_id = getattr(c, "bos_id", None), None
        self._ids = [max(c.pad_id, c.eos_id, self.bos_id or 0) + 1] * length

    def encode(self, text: str) -> list[int]:
        return list(self._ids)

    def _decode_base(self, ids) -> str:
        return ""

    def _base_piece(self, token_id: int) -> str:
        return ""

    def _find_piece(self, piece: str) -> int | None:
        return None


def _record(objective: str):
    return {"text": "article", "summary": "summary"} if objective == "seq2seq" else "text"


def _feature_row(cfg, model, tok) -> dict[str, np.ndarray]:
    """One host example of the stage's objective, from the training stage's own feature function."""
    fn = inputs._preprocess_fn(cfg.data, model, cfg.objective, tok)  # pylint: disable=protected-access
    record = _record(cfg.objective)
    if hasattr(fn, "random_map"):  # span corruption draws its spans from the pipeline's rng
        return fn.random_map(record, np.random.default_rng(0))
    return fn(record)


def train_batch(cfg, model, tok, sharding) -> dict:
    """The abstract global batch of a training stage (the fields `losses.prepare_batch` keeps)."""
    row = losses.prepare_batch({k: np.asarray(v)[None] for k, v in _feature_row(cfg, model, tok).items()},
                               model, cfg.objective, model.config.pad_id)
    return {k: jax.ShapeDtypeStruct((cfg.batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in row.items()}


# ----------------------------------------------------------------------------- training
def init_module(model, pcfg, rng, params):
    """The abstract module `peft.init` makes for an abstract base (prompt init may read the vocabulary)."""
    return jax.eval_shape(lambda p: peft_lib.init(model, pcfg, rng, params=p), params)


def _phase_modules(cfg, model, pcfg, rng, params) -> list[tuple[str, Any, int]]:
    """(phase name, abstract module, phase steps) of each phase `loop.plan_phases` plans."""
    out, previous = [], None
    for phase in loop.plan_phases(cfg):
        if phase.name == "dense":
            previous = jax.eval_shape(lambda: sparse.dense_module(model, pcfg))
        elif phase.name == "sparse" and previous is not None:
            previous = jax.eval_shape(lambda prev: sparse.select(prev, pcfg.density), previous)
        else:
            previous = init_module(model, pcfg, rng, params)
        out.append((phase.name, previous, phase.stop - phase.start))
    return out


def train_stages(name: str, cfg, extra_ids: int, devices) -> list[Stage]:
    """The train step of one training stage (one per LT-SFT phase) on its mesh over `devices`."""
    config_lib.check_values(cfg)
    mesh = partitioning.make_mesh(dict(cfg.mesh), devices)
    rules = loop.rules_of(cfg)
    partitioning.check_batch(cfg.batch_size, mesh, rules, cfg.micro_batches)
    model = get_model(cfg.model.name, dtype=cfg.model.dtype)
    losses.required_keys(model, cfg.objective)
    params_sh = partitioning.base_shardings(model, mesh, rules)
    params = _abstract(model.abstract_params(), params_sh)
    repl = partitioning.replicated(mesh)
    batch = train_batch(cfg, model, ShapeTokenizer(model, extra_ids, 4 * cfg.data.input_length),
                        NamedSharding(mesh, partitioning.batch_spec(rules)))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
    pcfg = config_lib.peft_config(cfg.peft)
    stages = []
    for phase, module, steps in _phase_modules(cfg, model, pcfg, jax.random.PRNGKey(cfg.seed), params):
        peft_sh = partitioning.peft_shardings(model, module, mesh, rules, cfg.peft.sharding)
        module = _abstract(module, peft_sh)
        optimizer, _ = optimizers.make_optimizer(cfg.optimizer, steps)
        opt_sh = step_lib.opt_state_shardings(optimizer, module, mesh)
        opt_state = _abstract(jax.eval_shape(optimizer.init, step_lib.trainable(module.params)), opt_sh)
        fn = step_lib.jit_train_step(model=model, optimizer=optimizer, peft_sharding=peft_sh, opt_sharding=opt_sh,
                                     params_sharding=params_sh, batch_sharding=batch[next(iter(batch))].sharding,
                                     scalar_sharding=repl, z_loss=cfg.z_loss, micro_batches=cfg.micro_batches)
        label = name if phase == "main" else f"{name} ({phase})"
        what = (f"{cfg.model.name} {cfg.model.dtype}, {cfg.objective}, batch {cfg.batch_size} x "
                f"{'/'.join(str(v.shape[1]) for v in batch.values() if v.ndim == 2)}, {pcfg.family}, "
                f"mesh {dict(mesh.shape)}")
        stages.append(Stage(label, what, fn, (module, opt_state, params, batch, rng), mesh.size))
    return stages


# ----------------------------------------------------------------------------- decoding
def _jit_generate(model, decode_config):
    """The jitted decoding loop `decode.generate` runs for the config's options (one per model and setting).

    `generate` checks its concrete inputs on the host, then calls this function with `model.decode_inputs`
    of the batch; the dry run lowers it directly with abstract arguments.
    """
    settings = make_settings(model, **generate_options(decode_config))
    return decode_api._jitted_generate(model, settings)  # pylint: disable=protected-access


def _decode_inputs(config, model, tok, sharding) -> dict:
    """The abstract `model.decode_inputs` of one decode batch of prompts, built as the evaluation Decoder does."""
    d = config.decode
    # The task module's training attention over the article, which the Decoder reads from its metadata.
    prefix = inputs.attends_prefix(config.task_train.data, model, config.task_train.objective)
    feats = model.prompt_features([tok.encode("article")] * d.batch_size, d.max_input_len, pad_id=tok.pad_id,
                                  eos_id=tok.eos_id, prefix=prefix)
    decode_inputs = model.decode_inputs({k: jnp.asarray(v) for k, v in feats.items()})  # a few KiB of ids
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding), decode_inputs)


def decode_stages(config, counts: dict[str, int], device) -> list[Stage]:
    """Decoding of λ selection and of the evaluation recipes, on one device as the pipeline decodes.

    counts: {"lang": language modules, "task": task modules, "grid": λ values of the largest sweep}.
    """
    cfg = config.task_train
    model = get_model(cfg.model.name, dtype=DECODE_DTYPE)
    on_device = SingleDeviceSharding(device)
    place = lambda tree: _abstract(tree, jax.tree.map(lambda _: on_device, tree))
    params = place(model.abstract_params())
    pcfg = config_lib.peft_config(cfg.peft)
    task = place(init_module(model, pcfg, jax.random.PRNGKey(0), params))
    lang = place(init_module(model, config_lib.peft_config(config.lang_train.peft), jax.random.PRNGKey(0), params))
    d = config.decode
    tok = ShapeTokenizer(model, config.tokenizer.extra_ids, 4 * d.max_input_len)
    batch = _decode_inputs(config, model, tok, on_device)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=on_device)
    fn = _jit_generate(model, d)
    # Every module file the pipeline's Context loads stays on the device while it decodes.
    held = counts["lang"] * nbytes(lang.params) + counts["task"] * nbytes(task.params)
    method = f"beam {d.num_beams}" if d.method == "beam" else d.method
    what = (f"{cfg.model.name} {DECODE_DTYPE}, {method}, batch {d.batch_size}, "
            f"{d.max_input_len} -> {d.max_decode_len} tokens")
    stages = [Stage("evaluate/decode", what + ", one module", fn, (params, batch, task, rng), 1, held)]
    if "stack" in config.recipes:
        stages.append(Stage("evaluate/decode_stack", what + ", language + task module", fn,
                            (params, batch, [lang, task], rng), 1, held))
    grid = counts["grid"]
    if grid and families.get(pcfg.family).batchable:  # the λ grid: G composed modules, one batch of rows gathered
        rows = place(jax.eval_shape(lambda m: batching.batch([m] * d.batch_size), task))
        stages.insert(0, Stage("select/decode", what + f", per-example rows of a {grid}-λ grid", fn,
                               (params, batch, rows, rng), 1, held + grid * nbytes(task.params)))
    return stages


def all_stages(config, devices, counts: dict[str, int]) -> list[Stage]:
    """Every stage of the pipeline's config: both training stages, then λ selection and evaluation."""
    stages = []
    for kind in ("lang", "task"):
        cfg = copy.deepcopy(config[f"{kind}_train"])
        stages.extend(train_stages(f"{kind}/train", cfg, config.tokenizer.extra_ids, devices))
    return stages + decode_stages(config, counts, devices[0])
