"""Optimizers for PEFT parameters: Adafactor (the T5 default) or AdamW, warmup + decay, clipping.

The optimizer is only ever initialised on the trainable PEFT leaves
(`step.trainable`), so its state holds nothing of the frozen base.
"""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adafactor", "adamw")


class OptimizerConfigError(ValueError):
    """An optimizer or schedule setting that does not exist or is out of range."""


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.learning_rate` over `cfg.warmup_steps`, then `cfg.schedule` decay.

    constant: stays at the peak; linear / cosine: decay to `peak * cfg.end_lr_ratio`
    at `total_steps`; rsqrt: T5's peak * sqrt(warmup / step) after warmup.
    """
    peak, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
    if cfg.schedule not in SCHEDULES:
        raise OptimizerConfigError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if peak <= 0 or warmup < 0:
        raise OptimizerConfigError(f"need learning_rate > 0 and warmup_steps >= 0, got {peak}, {warmup}")
    decay_steps = max(1, total_steps - warmup)
    end = peak * float(cfg.end_lr_ratio)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(cfg.end_lr_ratio))
    else:
        decay = lambda count: peak * (max(warmup, 1) / (count + max(warmup, 1))) ** 0.5
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _base_optimizer(cfg, schedule) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adafactor":
        # Parameter-scale multiplication is off by default: a fresh LoRA B or adapter up-projection is
        # all zeros and would get a 1e-3 step size (prompt tuning's Adafactor setting, Lester et al. 2021).
        return optax.adafactor(schedule, decay_rate=cfg.adafactor_decay_rate,
                               multiply_by_parameter_scale=cfg.adafactor_parameter_scale,
                               weight_decay_rate=cfg.weight_decay or None)
    raise OptimizerConfigError(f"optimizer.name must be one of {OPTIMIZERS}, got {cfg.name!r}")


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) from the config's `optimizer` section.

    Gradients are clipped to global norm `cfg.clip_norm` first (0 disables it).
    """
    schedule = make_schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm and cfg.clip_norm > 0 else []
    return optax.chain(*parts, _base_optimizer(cfg, schedule)), schedule
