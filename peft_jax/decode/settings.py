"""Decoding settings: the static configuration of one decoding loop, validated once.

`make_settings` checks every option and returns a hashable `DecodeSettings`, so
a jitted decoder is compiled once per distinct setting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from peft_jax.models.errors import DecodeError
from peft_jax.peft.module import PeftModule

METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Static decoding configuration; hashable, so jitted functions are cached per setting."""

    method: str
    max_decode_len: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.6
    length_penalty_form: str = "hf"
    early_stopping: Any = False
    no_repeat_ngram_size: int = 0
    eos_id: int = 1
    pad_id: int = 0
    return_all_beams: bool = False


def _check_int(name: str, value, minimum: int):
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DecodeError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise DecodeError(f"temperature must be a finite number >= 0, got {temperature!r}")
    _check_int("top_k", top_k, 0)
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise DecodeError(f"top_p must be in (0, 1], got {top_p!r}")


def _check_beam(num_beams, length_penalty, length_penalty_form, early_stopping):
    _check_int("num_beams (beam size)", num_beams, 1)
    if not (isinstance(length_penalty, (int, float)) and math.isfinite(length_penalty)):
        raise DecodeError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if length_penalty_form not in ("hf", "gnmt"):
        raise DecodeError(f"length_penalty_form must be 'hf' or 'gnmt', got {length_penalty_form!r}")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise DecodeError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def make_settings(model, method: str, max_decode_len: int, *, temperature=1.0, top_k=0, top_p=1.0, num_beams=4,
                  length_penalty=0.6, length_penalty_form="hf", early_stopping=False, no_repeat_ngram_size=0,
                  eos_id=None, return_all_beams=False) -> DecodeSettings:
    """Validated `DecodeSettings`; sampling at temperature 0 is greedy decoding.

    temperature, top_k (0: off), top_p (1: off): sampling filters, applied in that order.
    num_beams, length_penalty (alpha), length_penalty_form ('hf': len ** alpha, 'gnmt':
    ((5 + len) / 6) ** alpha), early_stopping (False, True or 'never', as in HF): beam search.
    no_repeat_ngram_size: ban tokens that would repeat an n-gram (0: off). eos_id: default the
    model's. return_all_beams: also return every kept hypothesis of beam search.
    """
    if method not in METHODS:
        raise DecodeError(f"unknown decoding method {method!r}; expected one of {METHODS}")
    _check_int("max_decode_len (decode length)", max_decode_len, 1)
    _check_sampling(temperature, top_k, top_p)
    _check_beam(num_beams, length_penalty, length_penalty_form, early_stopping)
    _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    c = model.config
    eos_id = c.eos_id if eos_id is None else eos_id
    _check_int("eos_id", eos_id, 0)
    if eos_id >= c.vocab_size:
        raise DecodeError(f"eos_id {eos_id} is outside the vocabulary (vocab_size={c.vocab_size})")
    if method == "sample" and temperature == 0:
        method = "greedy"  # the limit of sampling as temperature -> 0
    return DecodeSettings(method, int(max_decode_len), float(temperature), int(top_k), float(top_p), int(num_beams),
                          float(length_penalty), length_penalty_form, early_stopping, int(no_repeat_ngram_size),
                          int(eos_id), int(c.pad_id), bool(return_all_beams))


def check_peft_rows(peft, batch_size: int):
    """Batched (per-example) modules must have one row per example."""
    for i, m in enumerate(_modules(peft)):
        if isinstance(m, PeftModule) and m.batched:
            rows = jax.tree.leaves(m.params)[0].shape[0]
            if rows != batch_size:
                raise DecodeError(f"batched PEFT module {i} has {rows} rows but the batch has {batch_size}")


def check_ngram_size(s: DecodeSettings, width: int, prompt_width: int) -> None:
    """An n-gram longer than the whole decoded sequence can never repeat: a mistaken setting, refused."""
    if s.no_repeat_ngram_size > width:
        raise DecodeError(f"no_repeat_ngram_size={s.no_repeat_ngram_size} is larger than the decoded sequence "
                          f"({prompt_width} prompt positions + max_decode_len {s.max_decode_len} = {width} tokens): "
                          "no n-gram of that size fits, so nothing would ever be blocked")


# The metadata key under which training records how a decoder-only seq2seq module attended to its input.
ATTENTION_KEY = "decoder_attention"
ATTENTION_MODES = ("prefix", "causal")


def _modules(peft) -> list:
    return [] if peft is None else [peft] if isinstance(peft, PeftModule) else list(peft)


def _recorded_attention(meta: dict) -> set[str]:
    """The attention recorded in a module's metadata, its own or its composition inputs'."""
    found = {meta[ATTENTION_KEY]} if meta.get(ATTENTION_KEY) else set()
    for record in (meta.get("composition") or {}).get("inputs") or []:
        value = (record.get("metadata") or {}).get(ATTENTION_KEY)
        if value:
            found.add(value)
    return found


def trained_attention(peft) -> str | None:
    """How the modules' training attended to the input: 'prefix' (prefix LM), 'causal', or None when no
    module records it (language modules, encoder-decoder modules, modules trained before it was recorded).
    Modules that disagree are refused: no prompt layout serves both."""
    modes = set()
    for m in _modules(peft):
        if isinstance(m, PeftModule):
            modes |= _recorded_attention(m.metadata)
    if len(modes) > 1:
        raise DecodeError(f"the PEFT modules were trained with different attention over the input "
                          f"({ATTENTION_KEY} {sorted(modes)}); decode them separately")
    return next(iter(modes), None)


def check_attention(peft, batch) -> None:
    """Refuses decoding or scoring a module with attention over the prompt other than its training's."""
    trained = trained_attention(peft)
    if trained is None:
        return
    prefix = batch.get("decoder_causal_attention") if isinstance(batch, dict) else None
    given = "prefix" if prefix is not None and bool(np.any(jax.device_get(prefix))) else "causal"
    if given != trained:
        raise DecodeError(f"the PEFT module was trained with {ATTENTION_KEY}={trained!r} but the batch is read "
                          f"with {given!r} attention over the prompt; build it with "
                          f"model.prompt_features(..., prefix={trained == 'prefix'})")
