"""What a PEFT family is (the `Family` base class), the registry of families, and the composition plan.

A family is one parameter-efficient method (LoRA, (IA)^3, prompts, adapters, sparse deltas, or
one defined in user code). Everything the package does with a module asks the module's family,
found by name in the registry (`get(module.family)`): creation (`peft.init`), application inside
the models (`peft.apply`), folding into the base (`peft.merge` / `unmerge`), logical axes, batching,
parameter counting, composition (`compose.combine`), HF peft interchange and the benchmarks.

Adding a family: subclass `Family` with its config dataclass (a frozen dataclass whose last field is
`family: str = dataclasses.field(default=<name>, init=False)`), implement `init` and the hooks that
concern it (every other hook has a default that leaves the computation unchanged or refuses
clearly), then `register(MyFamily())`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.errors import PeftConfigError
from peft_jax.peft.families import sites


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one composition (hashable: the jit cache key besides shapes).

    options: the strategy's options with their defaults filled in, as sorted (name, value) pairs.
    facts: what the family worked out from the inputs before composing (LoRA: each input's
    scaling and the result's rank), as sorted (name, value) pairs.
    """

    family: str
    strategy: str
    options: tuple[tuple[str, Any], ...] = ()
    facts: tuple[tuple[str, Any], ...] = ()

    def opt(self, name: str):
        """The value of option `name`."""
        return dict(self.options)[name]

    def fact(self, name: str):
        """The value of fact `name`."""
        return dict(self.facts)[name]


# A composition kernel: (plan, [params of module i], weights [n], extras) -> params, or (params, aux).
Kernel = Callable[..., Any]


def weighted_sum(w: jax.Array, xs) -> jax.Array:
    """sum_i w_i x_i, accumulated in float32 and returned in the leaves' dtype."""
    out = sum(w[i] * x.astype(jnp.float32) for i, x in enumerate(xs))
    return out.astype(xs[0].dtype)


def leafwise_sum(plan: Plan, P, w, extras) -> dict:
    """The `param` kernel of families whose leaves add: every leaf is sum_i w_i leaf_i."""
    return jax.tree.map(lambda *xs: weighted_sum(w, xs), *P)


def require_positive(name: str, value, family: str) -> None:
    """Refuses a config value that is not a finite real number > 0, naming the family and the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PeftConfigError(f"{family}: {name} must be a number > 0, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PeftConfigError(f"{family}: {name} must be finite and > 0, got {value!r}")


def require_count(name: str, value, family: str) -> None:
    """Refuses a config value that is not an integer >= 1 (a float such as 8.0 or a string such as "8" too:
    a rank or a length is a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PeftConfigError(f"{family}: {name} must be an integer >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise PeftConfigError(f"{family}: {name} must be >= 1, got {value!r}")


def require_fraction(name: str, value, family: str) -> None:
    """Refuses a rate that is not a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= value < 1.0:
        raise PeftConfigError(f"{family}: {name} must be a number in [0, 1), got {value!r}")


def check_in_axes(in_axes, family: str) -> None:
    """Refuses an `in_axes` config value that is not ((target regex, (axis, ...)), ...)."""
    ok = isinstance(in_axes, tuple) and all(
        isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], tuple) and r[1]
        and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in r[1]) for r in in_axes)
    if not ok:
        raise PeftConfigError(f"{family}: in_axes must be ((target regex, (axis, ...)), ...), got {in_axes!r}")
    for pattern, _ in in_axes:
        require_pattern("in_axes pattern", pattern, family)


def require_pattern(name: str, value, family: str) -> None:
    """Refuses a target regex that is not a string or does not compile."""
    if not isinstance(value, str):
        raise PeftConfigError(f"{family}: {name} must be a regex string, got {type(value).__name__} {value!r}")
    try:
        re.compile(value)
    except re.error as e:
        raise PeftConfigError(f"{family}: {name} {value!r} is not a valid regex ({e})") from None


def is_concrete(x) -> bool:
    """True for arrays whose values can be read (not tracers inside jit / vmap / grad)."""
    return not isinstance(x, jax.core.Tracer)


class Family(abc.ABC):
    """One PEFT family. Class attributes describe it; methods are the hooks the package calls.

    Nodes: a module's params mirror the base paths it touches; a *node* is the dict at one site
    (LoRA: {lora_a, lora_b} next to a kernel). Views: during a forward pass each active module is
    seen through a `peft.apply.View` (`view.node`: the module's dict at the current position;
    `view.module`: the module, for its config; `view.batched`: leaves carry a leading batch axis),
    and `ctx` is the call's `peft.apply.Ctx` (compute dtype, `ctx.dropout`). An application hook is
    called for every active module that has something at the site, whatever its family: where the
    node holds nothing for the hook, it returns its input unchanged (or None for `update`).
    """

    # ------------------------------------------------------------------ identity
    name: ClassVar[str]
    """The registry key, equal to the config's `family` field and stored in module files."""
    config_class: ClassVar[type]
    """The frozen dataclass of this family's hyper-parameters."""
    node_keys: ClassVar[frozenset[str]] = frozenset()
    """Leaf names of which any one marks a dict as one of this family's nodes."""

    def is_node(self, x) -> bool:
        """True for a dict holding one site's leaves (used as `is_leaf` when flattening params)."""
        return isinstance(x, dict) and any(k in x for k in self.node_keys)

    def nodes(self, params: dict) -> dict[str, dict]:
        """{site path: node} of a module's params."""
        return tu.flatten(params, is_leaf=self.is_node)

    # ------------------------------------------------------------------ creation
    @abc.abstractmethod
    def init(self, model, config, rng: jax.Array, params: dict | None) -> dict:
        """A fresh module's params for `model` (from `model.param_specs()`; `params` only when the
        init reads base values, e.g. prompts from the vocabulary). A fresh module should leave the
        model's output unchanged where the method allows it."""

    from_tree: ClassVar[bool] = False
    """Whether `init` also works from a bare parameter pytree (its shapes), not only from a peft_jax model."""

    # ------------------------------------------------------------------ application at a site
    # Order at a kernel (`peft.apply.linear`): every view's `transform_input`, then x @ kernel (the
    # kernel read through `transform_leaf`), then every view's `update` added, then every view's
    # `transform_output`; each phase in module order. `after_sublayer` runs on sub-layer outputs,
    # `soft_prompt` at the input embedding.
    def transform_leaf(self, w: jax.Array, view, name: str) -> jax.Array:
        """Base leaf `name` as this module changes it (`view.node` sits under the leaf's name)."""
        return w

    def transform_input(self, x: jax.Array, view, ctx) -> jax.Array:
        """The input of the kernel at this site."""
        return x

    def update(self, x: jax.Array, view, ctx, name: str) -> jax.Array | None:
        """An additive term for x @ kernel (None: nothing); `name` keys dropout masks (`ctx.dropout`)."""
        return None

    def transform_output(self, y: jax.Array, view, ctx) -> jax.Array:
        """The output of the kernel at this site, after every update."""
        return y

    def after_sublayer(self, y: jax.Array, view, ctx) -> jax.Array:
        """A sub-layer's output (attention or MLP, before the residual add) at an adapter slot."""
        return y

    def soft_prompt(self, view, batch_size: int, dtype) -> jax.Array | None:
        """Embeddings [batch, P, embed] to prepend to the input (None: none); `view` is at the module's root."""
        return None

    # ------------------------------------------------------------------ folding into the base
    mergeable: ClassVar[bool] = False
    """Whether `fold` can write the module into the base weights (`peft.merge` / `unmerge`)."""

    @property
    def fold_refusal(self) -> str:
        """Why `peft.merge` refuses a module of a family that cannot be folded."""
        return f"{self.name} modules change the computation, not the weights: they cannot be merged"

    def base_leaf(self, path: str) -> str:
        """The base leaf that the node at `path` folds into."""
        return f"{path}/kernel"

    def fold(self, w: jax.Array, node: dict, config, sign: int) -> jax.Array:
        """The float32 base leaf `w` with `node` merged in (sign=+1) or taken out again (sign=-1)."""
        raise ValueError(self.fold_refusal)

    # ------------------------------------------------------------------ fit to a base
    kernel_view: ClassVar[bool] = False
    """Whether the nodes see the kernel at their site as a matrix [inputs, outputs]: an N-D kernel
    (`DenseGeneral` [d, heads, head_dim]) is read through `sites.Matrix` by merge and application."""

    def matrix_shape(self, node: dict, size: int) -> tuple[int, int] | None:
        """(inputs, outputs) of the kernel matrix a node expects, given the kernel's size (kernel_view
        families; None: the node does not say)."""
        return None

    def fit(self, path: str, node: dict, shapes: Mapping[str, tuple], config) -> str | None:
        """Why the node at `path` does not fit a base whose leaves have `shapes` (None: it fits).

        `node`'s leaves are arrays (traced inside jit; with a leading batch axis in a batched module, so
        read their trailing dimensions). The default asks for the base leaf the node folds into and,
        for kernel_view families, a kernel matrix of the node's shape."""
        key = self.base_leaf(path)
        if key not in shapes:
            return f"the base has no parameter {key}"
        if not self.kernel_view:
            return None
        return _matrix_problem(path, key, shapes[key], self.matrix_shape(node, int(np.prod(shapes[key]))), config)

    # ------------------------------------------------------------------ sharding, batching, counting
    def leaf_axes(self, name: str, kernel_spec) -> tuple | None:
        """Logical axis names of leaf `name` from the `ParamSpec` of the kernel at its site (None when
        the site has no kernel); None: the leaf is replicated."""
        return None

    batchable: ClassVar[bool] = True
    """Whether modules stack along a leading batch axis so row b of a batch uses module b."""

    adds_parameters: ClassVar[bool] = True
    """Whether the trainable values come on top of the base (False: they overwrite base entries)."""

    def count_trainable(self, params: dict) -> int:
        """The number of trainable scalars of a module."""
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

    # ------------------------------------------------------------------ composition
    strategies: ClassVar[tuple[str, ...]] = ()
    """The `compose.combine` strategies this family supports ("ties" / "dare" use `to_taus`,
    "stack" uses `scaled_leaves`; every other strategy needs a kernel)."""
    kernels: ClassVar[Mapping[str, Kernel]] = {}
    """{strategy: kernel}: the jitted arithmetic of each strategy (see `Kernel`)."""
    add_means: ClassVar[str | None] = "param"
    """The strategy the recipe word "add" stands for; None refuses "add" (with `add_refusal`)."""
    add_refusal: ClassVar[str] = ""
    """Appended to the refusal of "add" when `add_means` is None."""
    identity: ClassVar[float] = 0.0
    """The leaf value that leaves the base unchanged: task vectors (ties, dare) are leaf - identity,
    and a module stacked with weight l is identity + l (leaf - identity)."""
    scaled_leaves: ClassVar[frozenset[str]] = frozenset()
    """The leaves that `stack` scales by the module's weight (scaling them scales the module's effect)."""

    def strategy_options(self, strategy: str) -> dict:
        """Options (name: default) this family adds to `strategy`."""
        return {}

    def free_axes(self, plan: Plan) -> Callable[[str], set]:
        """path -> the axes of that leaf that may differ between the inputs of `plan`."""
        return lambda path: set()

    def shape_hint(self, plan: Plan) -> str:
        """Appended to the refusal of inputs whose shapes differ elsewhere."""
        return ""

    def plan_facts(self, modules: list, plan: Plan, first_path: str) -> dict:
        """Checks that `modules` compose under `plan` (raising `CompositionError`) and returns the
        static facts its kernels need."""
        return {}

    def composition_extras(self, modules: list, plan: Plan) -> dict:
        """Arrays worked out on the host before composing, passed to the kernels (sparse: the union of
        indices)."""
        return {}

    def to_taus(self, plan: Plan, P: list, extras: dict) -> dict[str, jax.Array]:
        """{path: task vectors [n, ...]} of the inputs, in the space ties and dare merge in."""
        flats = [tu.flatten(p) for p in P]
        return {path: jnp.stack([f[path].astype(jnp.float32) - self.identity for f in flats]) for path in flats[0]}

    def from_taus(self, plan: Plan, merged: dict, P: list, extras: dict) -> dict:
        """The composed params from merged task vectors (inverse of `to_taus`)."""
        flat0 = tu.flatten(P[0])
        return tu.unflatten({path: (v + self.identity).astype(flat0[path].dtype) for path, v in merged.items()})

    def scale_leaf(self, x: jax.Array, lam: jax.Array) -> jax.Array:
        """A leaf of `scaled_leaves` for a module stacked with weight `lam`."""
        # + 0.0 turns the -0.0 of a negative weight times 0 into 0.0.
        shift = (1.0 - lam) * self.identity if self.identity else 0.0
        return (lam * x.astype(jnp.float32) + shift).astype(x.dtype)

    def result_config(self, plan: Plan, configs: list, params: dict):
        """The config of the composed module."""
        return configs[0]

    def composition_report(self, plan: Plan, aux: dict) -> dict:
        """Entries for the result's metadata["composition"] from a kernel's aux output."""
        return {}

    # ------------------------------------------------------------------ Hugging Face peft
    hf_peft_type: ClassVar[str | None] = None
    """HF peft's `peft_type` of the adapter directories this family reads and writes (None: none)."""

    def hf_export(self, module, names: dict[str, str]) -> tuple[dict, dict]:
        """(tensors by HF name, adapter_config.json fields) of `module`; `names` maps our kernel
        module paths to HF module names."""
        raise NotImplementedError(f"{self.name} modules have no Hugging Face peft mapping")

    def hf_import(self, hf_config: dict, tensors: dict, reverse: dict[str, str], config_path: str,
                  weights_path: str) -> tuple[dict, Any]:
        """(params, config) from an adapter directory's config and tensors (by HF name); `reverse` maps
        HF module names to our kernel module paths; the two paths name the files in errors."""
        raise NotImplementedError(f"{self.name} modules have no Hugging Face peft mapping")

    # ------------------------------------------------------------------ benchmarks
    bench_noise: ClassVar[Mapping[str, float] | None] = None
    """Leaf name -> scale of the noise the benchmark adds to a fresh module, so that both sides'
    first steps exercise the PEFT path; None: the family is not benchmarked."""

    def bench_config(self, section: dict):
        """The config of a benchmark job's `peft` section (its keys that are config fields)."""
        names = {f.name for f in dataclasses.fields(self.config_class) if f.init}
        return self.config_class(**{k: v for k, v in section.items() if k in names})

    def hf_state(self, module, names: dict[str, str]) -> dict[str, np.ndarray]:
        """HF peft's state dict of a module of a family without an adapter directory (`hf_peft_type`)."""
        raise NotImplementedError(f"{self.name} modules have no Hugging Face peft state dict")

    # ------------------------------------------------------------------ training configs
    schedule_fields: ClassVar[Mapping[str, Any]] = {}
    """Training-schedule knobs that sit in the family's config section but are not part of the
    module (sparse: the dense phase's share of the steps)."""


def _matrix_problem(path: str, key: str, shape: tuple, rows_cols, config) -> str | None:
    """Why a kernel of `shape` cannot be read as the [rows, cols] matrix a node expects (None: it can)."""
    if rows_cols is None:
        return None
    rows, cols = rows_cols
    try:
        want = sites.Matrix.of(path, shape, config, rows=rows).shape2d
    except ValueError as e:
        return str(e)
    if (rows, cols) != want:
        return (f"the module expects {key} as a [{rows}, {cols}] matrix (inputs, outputs), but the base kernel has "
                f"shape {tuple(shape)}, read as {list(want)}")
    return None


# ---------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` to the registry under `family.name` (a name is registered once)."""
    if not isinstance(family, Family):
        raise TypeError(f"register() takes a Family instance, got {type(family).__name__}")
    default = {f.name: f.default for f in dataclasses.fields(family.config_class)}.get("family")
    if default != family.name:
        raise PeftConfigError(f"{type(family).__name__}: config_class {family.config_class.__name__} must have "
                              f"a field family = {family.name!r} (init=False), got {default!r}")
    if family.name in _REGISTRY:
        raise PeftConfigError(f"a PEFT family named {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> Family:
    """Removes the family called `name` from the registry and returns it (e.g. a test's own family)."""
    get(name)
    return _REGISTRY.pop(name)


def get(name: str) -> Family:
    """The registered family called `name`."""
    if name not in _REGISTRY:
        raise PeftConfigError(f"unknown PEFT family {name!r}; expected one of {names()}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_REGISTRY)


def of_config(config) -> Family:
    """The family of a config object; anything else is a `PeftConfigError`."""
    family = _REGISTRY.get(getattr(config, "family", None))
    if family is None or not isinstance(config, family.config_class):
        raise PeftConfigError(f"not a PEFT config: {config!r}")
    return family
