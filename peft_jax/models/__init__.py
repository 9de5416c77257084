"""Flax-free pure-JAX models: mT5 (encoder-decoder) and a PaLM-style decoder-only family.

`base.Model` is the contract both implement and everything else relies on;
`registry` lists the architectures. `load_pretrained` (`hf`) reads checkpoints of every format in
`checkpoints/` strictly (`hf_config` for config.json, `hf_names` for tensor names).
"""

from peft_jax.models.base import DecodeStart, Model
from peft_jax.models.errors import CheckpointError, DecodeError
from peft_jax.models.t5 import T5Config, T5Model
from peft_jax.models.decoder import DecoderConfig, DecoderModel
from peft_jax.models.registry import MODEL_CLASSES, model_class
from peft_jax.models.presets import get_model, PRESETS
from peft_jax.models.hf import load_pretrained

__all__ = ["T5Config", "T5Model", "DecoderConfig", "DecoderModel", "get_model", "PRESETS", "load_pretrained",
           "CheckpointError", "DecodeError", "DecodeStart", "Model", "MODEL_CLASSES", "model_class"]
