"""PEFT modules as pytrees separate from the frozen base (filled in by peft_jax.peft.core)."""

from peft_jax.peft.module import (Module, LoraConfig, PromptConfig, IA3Config, AdapterConfig, SparseConfig,
                                  PeftConfigError, config_from_dict, config_to_dict)
