"""The model contract: everything training, decoding, scoring and evaluation ask of a model.

Both architectures (`T5Model`, `DecoderModel`) implement `Model`. Code outside
`peft_jax.models` reaches a model only through these members: which training
objectives it supports and the batch fields each needs, how features are built
for it, how decoding starts, how its state is expanded for beam search, and how
its parameters are named in Hugging Face checkpoints. `family` names the
architecture for messages and records only; nothing branches on it.

Models are frozen dataclasses, hence hashable: jitted functions close over them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models import hf_names, spec
from peft_jax.models.errors import DecodeError
from peft_jax.models.layers import Head

DECODER_KEYS = ("decoder_input_tokens", "decoder_target_tokens")


class DecodeStart(NamedTuple):
    """How a decoding buffer starts (traced arrays).

    prompt: int32 [B, P], the tokens decoding is conditioned on inside the decoder.
    prompt_lengths: int32 [B], real tokens of each prompt row (the rest is padding).
    init_batch: what `decode_init` reads.
    """

    prompt: jax.Array
    prompt_lengths: jax.Array
    init_batch: dict


class Model(abc.ABC):
    """A frozen base model as pure functions of explicit parameter trees.

    Subclasses are frozen dataclasses with a `config` field and set the class attributes below.
    `peft` arguments take None, one PEFT module, or a sequence of modules applied together.
    """

    config: Any
    family: str  # informational architecture name ("encoder_decoder", "decoder_only")

    # The config dataclass this model is built from (native checkpoints store its name).
    CONFIG_CLASS: ClassVar[type]
    # objective -> the batch fields (t5x names) its loss needs, in the order errors report them.
    OBJECTIVES: ClassVar[Mapping[str, tuple[str, ...]]]
    # The token arrays `logits` reads.
    LOGITS_KEYS: ClassVar[tuple[str, ...]]
    # `task_type` of a Hugging Face peft adapter for this architecture.
    HF_TASK_TYPE: ClassVar[str]

    # ------------------------------------------------------------------ parameters
    @abc.abstractmethod
    def param_specs(self) -> dict:
        """Nested dict of `spec.ParamSpec`: shape, logical axes and init of every base leaf."""

    def init(self, rng: jax.Array) -> dict:
        """Random base parameters (float32)."""
        return spec.init_params(self.param_specs(), rng)

    def abstract_params(self) -> dict:
        """`jax.ShapeDtypeStruct` tree of the parameters (nothing allocated)."""
        return spec.abstract_params(self.param_specs())

    def logical_axes(self) -> dict:
        """`PartitionSpec` tree over logical axis names, one per parameter."""
        return spec.logical_axes(self.param_specs())

    @property
    def dtype(self):
        """The compute dtype."""
        return jnp.dtype(self.config.dtype)

    # ----------------------------------------------------------------- computation
    @abc.abstractmethod
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V] of `batch` (the fields in `LOGITS_KEYS`).

        Token ids outside [0, vocab_size) raise `DecodeError` when the batch is concrete; inside
        `jax.jit` they cannot be checked and are clamped / wrapped as JAX gathers do (`check_token_ids`).
        """

    @abc.abstractmethod
    def hidden(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """The final states [B, T, D] that the output head of `logits` projects."""

    @abc.abstractmethod
    def frozen_head(self, params, peft=None) -> Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""

    # -------------------------------------------------------------------- decoding
    @abc.abstractmethod
    def decode_inputs(self, batch: dict) -> dict:
        """The arrays the jitted decoder needs from a user's batch, checked (`DecodeError` if unusable)."""

    @abc.abstractmethod
    def decode_start(self, inputs: dict) -> DecodeStart:
        """The prompt, its lengths and the `decode_init` batch from `decode_inputs` output (traced)."""

    @abc.abstractmethod
    def decode_init(self, params, batch: dict, max_decode_len: int, peft=None) -> dict:
        """The decoding state (caches) for `max_decode_len` decoder positions."""

    @abc.abstractmethod
    def decode_step(self, params, state: dict, tokens_BxT, peft=None) -> tuple[jax.Array, dict]:
        """Logits [B, T, V] for T new tokens at the state's position, and the advanced state."""

    @abc.abstractmethod
    def expand_beams(self, state: dict, k: int) -> dict:
        """The state for k beams per example (beams of row b at rows b*k .. b*k+k-1). Leaves may stay
        one row per example when every beam of a row shares them; beam search leaves those in place."""

    # ------------------------------------------------------------- data and prompts
    @classmethod
    @abc.abstractmethod
    def pair_features(cls, input_ids, target_ids, input_len: int, target_len: int, *, eos_id: int, pad_id: int,
                      decoder_start_id: int | None = None, prefix: bool = True) -> dict[str, np.ndarray]:
        """An (input, target) example as this architecture's seq2seq training features (t5x names).

        `decoder_start_id`: pass the model's (`Model.decoder_start_id`). `prefix`: the input is attended
        bidirectionally (always so through an encoder; a decoder-only model may train causally instead).
        `prompt_features(texts, input_len - target_len)` is the decoding side of the same layout.
        """

    @property
    def decoder_start_id(self) -> int | None:
        """The token decoder inputs start with in training features and prompts (None: the pad id)."""
        return None

    @abc.abstractmethod
    def prompt_features(self, token_lists: Sequence[Sequence[int]], max_input_len: int, *, pad_id: int,
                        eos_id: int, prefix: bool = True) -> dict[str, np.ndarray]:
        """Generation inputs for already-encoded texts, as `decode_inputs` reads them, with the input
        attended as `pair_features(..., prefix=prefix)` trained it."""

    # ------------------------------------------------------------ Hugging Face names
    @abc.abstractmethod
    def hf_param_names(self) -> hf_names.Names:
        """(our path, HF tensor names to try, transform) for every parameter (`CheckpointError` if the
        architecture has no Hugging Face layout)."""

    def hf_module_names(self) -> dict[str, str]:
        """{our kernel's module path: Hugging Face module name}."""
        return hf_names.module_names(self.hf_param_names())


def token_array(batch, key: str) -> jax.Array:
    """batch[key], checked to be a 2-D integer array with at least one row and one position
    (`DecodeError` otherwise)."""
    if not isinstance(batch, dict) or key not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DecodeError(f"batch needs {key!r} (int [batch, length]); got {got}")
    x = batch[key]
    if getattr(x, "ndim", None) != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
        raise DecodeError(f"batch[{key!r}] must be a 2-D integer array, got "
                          f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if 0 in x.shape:
        what = "no rows (an empty batch)" if x.shape[0] == 0 else "zero-length rows"
        raise DecodeError(f"batch[{key!r}] has shape {tuple(x.shape)}: {what}")
    return x


def check_token_ids(batch, keys: Sequence[str], vocab_size: int) -> None:
    """Refuses token ids outside [0, vocab_size) in `batch[key]` for each key present (`DecodeError`
    naming the key, the offending value and where it is).

    A host-side check of concrete arrays (numpy, on the host copy of the ids). Traced arrays (inside
    `jax.jit`) and arrays spread over several hosts are not checked: there, as in any JAX gather, an id
    >= vocab_size reads the last embedding row and a negative id wraps around, so check batches before
    jitted code sees them (`generate` and `score` do).
    """
    for key in keys:
        x = batch.get(key) if isinstance(batch, dict) else None
        if x is None or isinstance(x, jax.core.Tracer) or getattr(x, "size", 0) == 0:
            continue
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            continue
        ids = np.asarray(x)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            row, col = (int(i) for i in np.argwhere(ids == bad)[0])
            raise DecodeError(f"batch[{key!r}] holds token id {bad} at [{row}, {col}], outside the vocabulary "
                              f"[0, {vocab_size})")


def first_decode_position(prompt_lengths) -> jax.Array:
    """The position decoding feeds first: the last prompt position every row has (`decode_init` has read
    everything before it; the encoder-decoder's one-token prompts make it 0)."""
    return jnp.min(prompt_lengths) - 1


def tokenizer_ids(config, tok) -> dict[str, int]:
    """The tokenizer's special ids (pad, EOS, BOS) for the fields the model config `config` has: a base
    built for a tokenizer pads, starts and ends its sequences with that tokenizer's ids."""
    names = {f.name for f in dataclasses.fields(config)}
    return {k: int(getattr(tok, k)) for k in ("pad_id", "eos_id", "bos_id")
            if k in names and getattr(tok, k, None) is not None}


def right_padded(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
    """int32 [len(rows), length]: each row's tokens followed by `pad_id`."""
    out = np.full((len(rows), length), pad_id, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
