"""TIES and DARE: the strategies every family shares, on task vectors tau_i.

Each family says what its task vectors are (`Family.to_taus`: leaf - identity by default, LoRA's
dense update s A B under space="delta", sparse values over the union of indices) and how merged
vectors become params again (`Family.from_taus`); the merging itself is the same for all:

  ties  TIES-merging (Yadav et al. 2023), per tensor: u_i = l_i tau_i; trim each u_i to its
        k = round(density * size) largest magnitudes; elect the sign of sum_i u_i; average the kept
        entries that agree with it (disjoint mean).
  dare  DARE (Yu et al. 2023): each entry of each tau_i is dropped with probability `p` and the kept
        ones rescaled by 1/(1-p), then sum l_i tau_i. Masks come from `seed`, the target path and the
        module's position, so they are reproducible and the same for every point of a weight grid.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.peft import families


def trim_top_k(x: jax.Array, k: int) -> jax.Array:
    """x with all but its k largest-magnitude entries set to 0 (ties broken by position, exactly k kept)."""
    flat = x.reshape(-1)
    order = jnp.argsort(-jnp.abs(flat), stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    return jnp.where(keep, flat, 0).reshape(x.shape)


def ties_merge(taus: jax.Array, w: jax.Array, density: float) -> jax.Array:
    """TIES on stacked task vectors taus [n, ...]: weight, trim (per vector), elect sign, disjoint mean."""
    u = w.reshape((-1,) + (1,) * (taus.ndim - 1)) * taus
    k = max(1, int(round(density * int(np.prod(taus.shape[1:])))))
    trimmed = jax.vmap(trim_top_k, in_axes=(0, None))(u, k)
    sign = jnp.sign(trimmed.sum(0))
    agree = (jnp.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    # Entries whose elected sign no kept value supports are 0, not 0/0.
    return jnp.where(count > 0, jnp.where(agree, trimmed, 0).sum(0) / jnp.maximum(count, 1), 0.0)


def dare_merge(taus: jax.Array, w: jax.Array, p: float, keys: jax.Array) -> jax.Array:
    """DARE on stacked task vectors taus [n, ...]: drop with probability p, rescale by 1/(1-p), weighted sum."""
    def drop(tau, key):
        keep = jax.random.bernoulli(key, 1.0 - p, tau.shape)
        return jnp.where(keep, tau / (1.0 - p), 0.0)
    return jnp.tensordot(w, jax.vmap(drop)(taus, keys), axes=1)


def dare_keys(seed: int, path: str, n: int) -> jax.Array:
    """One key per module for the tensor at `path`: fixed by seed, path and position."""
    base = jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))


def ties(plan: families.Plan, P, w, extras):
    """The `ties` kernel of any family (through its task vectors)."""
    family = families.get(plan.family)
    taus = family.to_taus(plan, P, extras)
    return family.from_taus(plan, {p: ties_merge(t, w, plan.opt("density")) for p, t in taus.items()}, P, extras)


def dare(plan: families.Plan, P, w, extras):
    """The `dare` kernel of any family (through its task vectors)."""
    family = families.get(plan.family)
    taus = family.to_taus(plan, P, extras)
    merged = {p: dare_merge(t, w, plan.opt("p"), dare_keys(plan.opt("seed"), p, len(P))) for p, t in taus.items()}
    return family.from_taus(plan, merged, P, extras)


# Strategies on task vectors, their kernels and their options (name: default).
KERNELS = {"ties": ties, "dare": dare}
OPTIONS = {"ties": {"density": 0.2}, "dare": {"p": 0.5, "seed": 0}}
