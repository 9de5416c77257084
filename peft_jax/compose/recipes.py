"""The paper's composition recipes, as readable calls over `combine`.

  add(task, lang)                          task + lang
  weighted(task, lang, lam)                lam * task + (1 - lam) * lang
  analogy(task_src, lang_tgt, lang_src, lam)   task_src + lam * (lang_tgt - lang_src)
  multi_source({lang: task module}, target, by="family"|"genus"|"script"|"typology", k=..., lang_module=...)
                                           mean (or weighted mix) of the task modules of languages related
                                           to the target, plus lang_weight * the target's language module
  stack(lang, task)                        [lang, task] applied together, in order (MAD-X for adapters)

Every recipe takes `strategy=` and the strategy's options and passes them to `combine`, whose default
"param" is the paper's element-wise arithmetic (see `peft_jax.compose.algebra` for what each strategy
means: under "param" a subtracted LoRA is not removed, use "delta", "concat" or "negate_b" for that).
The result's metadata["composition"]["recipe"] records the recipe and its arguments.
"""

from __future__ import annotations

import json
from typing import Mapping

from peft_jax import languages
from peft_jax.compose.algebra import combine
from peft_jax.compose.checks import CompositionError
from peft_jax.compose.related import related_languages, typological_distance
from peft_jax.peft.module import PeftModule


def _tag(result, **recipe):
    """Records the recipe and its arguments in the composition metadata (of each module of a stack)."""
    def tag_one(m: PeftModule) -> PeftModule:
        meta = m.metadata
        meta["composition"]["recipe"] = recipe
        return m.replace(metadata_json=json.dumps(meta, sort_keys=True))
    return [tag_one(m) for m in result] if isinstance(result, list) else tag_one(result)


def add(task: PeftModule, lang: PeftModule, strategy: str = "param", **options) -> PeftModule:
    """task + lang: the task module and the target language module at full weight."""
    return _tag(combine([task, lang], [1.0, 1.0], strategy, **options), name="add")


def weighted(task: PeftModule, lang: PeftModule, lam: float, strategy: str = "param", **options) -> PeftModule:
    """lam * task + (1 - lam) * lang."""
    lam = float(lam)
    return _tag(combine([task, lang], [lam, 1.0 - lam], strategy, **options), name="weighted", lam=lam)


def analogy(task_src: PeftModule, lang_tgt: PeftModule, lang_src: PeftModule, lam: float = 1.0,
            strategy: str = "param", **options) -> PeftModule:
    """task_src + lam * (lang_tgt - lang_src): "summarize in tgt" = "summarize in src" + "tgt" - "src".

    Under the default "param" strategy, -lang_src flips both LoRA factors, so its product is added back
    rather than removed (the cross term the paper's arithmetic has); "delta"/"concat" subtract exactly.
    """
    lam = float(lam)
    result = combine([task_src, lang_tgt, lang_src], [1.0, lam, -lam], strategy, **options)
    return _tag(result, name="analogy", lam=lam)


def _source_weights(selected: list, weights, target) -> list[float]:
    """Weights of the selected source languages: uniform mean, a mapping, or typological similarity."""
    if weights is None:
        return [1.0 / len(selected)] * len(selected)
    if weights == "similarity":  # proportional to 1 - cosine distance, normalised to sum to 1
        sims = [max(0.0, 1.0 - typological_distance(target, lang)) for lang in selected]
        total = sum(sims)
        return [s / total for s in sims] if total > 0 else [1.0 / len(selected)] * len(selected)
    if isinstance(weights, Mapping):
        missing = [lang for lang in selected if lang not in weights]
        if missing:
            raise CompositionError(f"weights has no entry for selected source language(s) {missing}")
        return [float(weights[lang]) for lang in selected]
    raise CompositionError(f"weights must be None (mean), 'similarity' or a mapping language -> weight, "
                           f"got {type(weights).__name__}")


def multi_source(task_modules: Mapping, target, by: str = "family", k: int | None = None,
                 lang_module: PeftModule | None = None, weights=None, lang_weight: float = 1.0,
                 features: str = "syntax", strategy: str = "param", **options) -> PeftModule:
    """A task module for `target` mixed from the task modules of related languages.

    Args:
      task_modules: {language code: task module trained on that language}. The target itself, if present,
        is never a source (zero-shot).
      target: the target language code.
      by, k, features: how sources are chosen (`related_languages`); by="typology" needs k.
      lang_module: the target's language module, added with `lang_weight`.
      weights: None (mean of the sources), "similarity" (proportional to typological similarity) or
        {language: weight} for the selected sources.
      strategy, **options: passed to `combine`.

    Raises:
      CompositionError: no candidate is related to the target, or bad weights.
    """
    if by == "typology" and k is None:
        raise CompositionError("by='typology' ranks every candidate; pass k, the number of sources to mix")
    selected = related_languages(target, list(task_modules), by=by, k=k, features=features)
    if not selected:
        tgt = languages.resolve(target)
        raise CompositionError(f"no candidate among {list(task_modules)} shares the {by} of {tgt.name!r} "
                               f"({getattr(tgt, by, '?')}); try by='typology'")
    source_w = _source_weights(selected, weights, target)
    modules = [task_modules[lang] for lang in selected] + ([lang_module] if lang_module is not None else [])
    all_w = source_w + ([float(lang_weight)] if lang_module is not None else [])
    result = combine(modules, all_w, strategy, **options)
    return _tag(result, name="multi_source", target=languages.resolve(target).name, by=by, k=k,
                sources=[str(lang) for lang in selected], source_weights=source_w,
                lang_weight=float(lang_weight) if lang_module is not None else None)


def stack(*modules: PeftModule, weights=None) -> list[PeftModule]:
    """The modules to apply together, in order (e.g. stack(lang, task): MAD-X), each scaled by its weight."""
    weights = [1.0] * len(modules) if weights is None else [float(w) for w in weights]
    return _tag(combine(list(modules), weights, "stack"), name="stack")
