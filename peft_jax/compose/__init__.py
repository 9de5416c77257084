"""Language and task arithmetic: composing PEFT modules with explicit, tested semantics.

  from peft_jax import compose
  m = compose.combine([task_en, lang_sw, lang_en], [1.0, 1.0, -1.0], strategy="delta")
  m = compose.analogy(task_en, lang_sw, lang_en, lam=0.5)             # task + lam (lang_tgt - lang_src)
  m = compose.multi_source({"hindi": t_hi, "marathi": t_mr}, "nepali", by="family", lang_module=lang_ne)
  grid = compose.combine_grid([task, lang], [[1, l] for l in lams])   # batched: one row per lambda
  compose.related_languages("nepali", ["hindi", "english", "marathi"], by="typology", k=2)

Strategies and their semantics: `peft_jax.compose.algebra` and each family's file under
`peft_jax.peft.families`; TIES and DARE: `peft_jax.compose.merging`. Refusals and fingerprints:
`peft_jax.compose.checks`. Recipes: `peft_jax.compose.recipes`. Related languages and the
typological table: `peft_jax.compose.related`.
"""

from peft_jax.compose.checks import CompositionError, module_fingerprint
from peft_jax.compose.algebra import STRATEGIES, combine, combine_grid, dense_as_lora, lora_delta
from peft_jax.compose.recipes import add, analogy, multi_source, stack, weighted
from peft_jax.compose.related import (TypologyError, related_languages, typological_distance, typology_vector)

__all__ = ["CompositionError", "module_fingerprint", "STRATEGIES", "combine", "combine_grid", "dense_as_lora",
           "lora_delta", "add", "analogy", "multi_source", "stack", "weighted", "TypologyError",
           "related_languages", "typological_distance", "typology_vector"]
