"""Flax-free pure-JAX models: mT5 (encoder-decoder) and a PaLM-style decoder-only family."""

from peft_jax.models.t5 import T5Config, T5Model
from peft_jax.models.decoder import DecoderConfig, DecoderModel
from peft_jax.models.presets import get_model, PRESETS
from peft_jax.models.hf import load_pretrained, CheckpointError

__all__ = ["T5Config", "T5Model", "DecoderConfig", "DecoderModel", "get_model", "PRESETS", "load_pretrained",
           "CheckpointError"]
