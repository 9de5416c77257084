"""Training PEFT modules on a frozen, sharded base.

  from peft_jax import train
  result = train.train(config, workdir)          # config: configs/train.py:get_config('model=...')
  results = train.train_together([config_a, config_b], [workdir_a, workdir_b])   # one step, a module axis
  train.train_step(peft, opt_state, params, batch, rng, model=..., optimizer=...)

Modules: `step` (pure train / eval steps, gradients w.r.t. PEFT params only),
`losses` (cross-entropy with masking and z-loss, per-objective batch checks),
`optimizers` (Adafactor / AdamW, schedules, clipping), `partitioning` (mesh,
logical-axis rules, sharded base init and loading), `inputs` (batch iterators),
`sparse` (LT-SFT selection), `checkpoints`, `reporting`, `loop`, `together` (several
modules in one vmapped step), `host_memory` (returning
what XLA's compiler freed to the OS).
"""

from peft_jax.train.checkpoints import Checkpoints
from peft_jax.train.config_lib import ConfigError, check_fields, check_overrides, peft_config
from peft_jax.train.inputs import ArrayIterator, BatchIterator, memorisable_features
from peft_jax.train.losses import BatchError, cross_entropy, prepare_batch
from peft_jax.train.loop import NonFiniteLossError, TrainResult, WorkdirError, train
from peft_jax.train.optimizers import make_optimizer, make_schedule
from peft_jax.train.partitioning import MeshError, DEFAULT_RULES, make_mesh
from peft_jax.train.sparse import dense_module, select
from peft_jax.train.step import compile_step, eval_step, jit_train_step, loss_and_grads, train_step, trainable
from peft_jax.train.together import check_together, train_together

__all__ = ["ArrayIterator", "BatchError", "BatchIterator", "Checkpoints", "ConfigError", "DEFAULT_RULES",
           "MeshError", "NonFiniteLossError", "TrainResult", "WorkdirError", "check_fields", "check_overrides",
           "compile_step", "check_together", "cross_entropy", "dense_module", "eval_step", "jit_train_step",
           "loss_and_grads", "make_mesh", "make_optimizer", "make_schedule", "memorisable_features", "peft_config",
           "prepare_batch", "select", "train", "train_step", "train_together", "trainable"]
