"""peft_jax: language and task arithmetic with parameter-efficient modules in JAX.

Public API:
  load_pretrained(path) -> (model, params)     mT5/T5 v1.1/Llama/Gemma/Gemma 2 checkpoints (HF safetensors,
                                               .bin, Flax msgpack, Hub ids; t5x legacy/Orbax with model=)
  save_pretrained(dir, model, params, peft=...)  a base with modules merged, as a Hugging Face checkpoint
  generate(model, params, batch, peft=None, method=...)   jitted greedy / sampling / beam search
  score(model, params, batch, peft=None)       per-example log-likelihoods
  models    mT5 and decoder-only models behind one contract (`models.Model`)
  peft      init / merge / save / load / count / export_hf / import_hf
  compose   combine and the paper's recipes (add, analogy, multi-source)
  data      XL-Sum and unlabeled-text sources, tokenizers, pipelines, the synthetic world
  metrics   multilingual ROUGE, wrong-language rate, bootstrap
"""

import importlib

from peft_jax.models import load_pretrained

__version__ = "0.1.0"


def __getattr__(name):
    # Subpackages and decoding load on first use, so `import peft_jax` stays fast.
    if name in ("peft", "compose", "data", "metrics", "models", "train", "languages"):
        return importlib.import_module(f"peft_jax.{name}")
    if name == "save_pretrained":  # brings the peft package: loaded on first use
        return importlib.import_module("peft_jax.models.checkpoints.save").save_pretrained
    if name in ("generate", "score"):
        return getattr(importlib.import_module("peft_jax.decode"), name)
    raise AttributeError(f"module 'peft_jax' has no attribute {name!r}")


__all__ = ["load_pretrained", "save_pretrained", "generate", "score", "peft", "compose", "data", "metrics",
           "__version__"]
