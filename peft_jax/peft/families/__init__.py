"""The PEFT families, one file each, behind the `Family` protocol of `base` and its registry.

  from peft_jax.peft import families
  families.get("lora").strategies          # what compose.combine accepts for LoRA
  families.names()                         # ('lora', 'prompt', 'ia3', 'adapter', 'sparse', ...)
  families.register(MyFamily())            # a family defined in user code (see base.Family)
  families.sites                           # helpers for its init: kernel specs, target regexes, keys

The built-in families are registered below, one line each.
"""

from peft_jax.peft.families.base import (Family, Plan, get, leafwise_sum, names, of_config, register, unregister,
                                         weighted_sum)
from peft_jax.peft.families import adapter, ia3, lora, prompt, sites, sparse

register(lora.FAMILY)
register(prompt.FAMILY)
register(ia3.FAMILY)
register(adapter.FAMILY)
register(sparse.FAMILY)

__all__ = ["Family", "Plan", "get", "leafwise_sum", "names", "of_config", "register", "sites", "unregister",
           "weighted_sum"]
