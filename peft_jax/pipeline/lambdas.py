"""How λ is chosen for the λ recipes (`weighted`, `analogy`), under a named protocol.

  fixed              λ from the config (`lambda_fixed.<recipe>`); no labels are read
  source_validation  λ chosen on labeled languages only: each labeled language other than the source
                     plays the target (task_src composed with *its* language module) and is scored on its
                     own validation split; the λ with the best mean ROUGE-L is used for every target.
                     No target-language label is read: this is the zero-shot protocol.
  target_oracle      λ chosen per target on the target's gold validation summaries. It reads labels the
                     zero-shot setting does not have, so its scores are an upper bound, named as such.

Every sweep is decoded in one pass: the λ grid is one batched module of G rows (a vmapped
composition), and text i of the G x n validation texts is decoded with row `i // n` gathered per decode
batch, so device memory holds the G composed modules plus one decode batch of rows, whatever n is.
"""

from __future__ import annotations

import numpy as np

from peft_jax import compose, languages, peft

PROTOCOLS = ("fixed", "source_validation", "target_oracle")
LAMBDA_RECIPES = ("weighted", "analogy")


class LambdaProtocolError(ValueError):
    """A λ protocol that cannot run with this config (unknown name, empty grid, no labeled pseudo-target)."""


def grid(config, recipe: str) -> list[float]:
    """The λ values tried for `recipe`: `weighted_lambdas` for weighted when set, else `lambdas`."""
    values = config.get("weighted_lambdas", ()) if recipe == "weighted" else ()
    return [float(x) for x in (values or config.lambdas)]


def fixed_value(config, recipe: str) -> float:
    """The configured λ of `recipe` under the `fixed` protocol."""
    return float(config.lambda_fixed[recipe])


def has_text(config, lang: str) -> bool:
    """Whether `lang` has unlabeled text for a language module (the table, or the config's overrides)."""
    return languages.has_unlabeled_text(lang) or lang in config.get("data", {}).get("text_overrides", {})


def pseudo_targets(config) -> list[str]:
    """The labeled languages that stand in for a target under `source_validation` (they need text)."""
    return [lang for lang in config.labeled_languages if lang != config.source_language and has_text(config, lang)]


def recipes_with_lambda(config) -> list[str]:
    return [r for r in config.recipes if r in LAMBDA_RECIPES]


def check(config) -> None:
    """Refuses a protocol that cannot run, before any stage starts."""
    protocol = config.lambda_protocol
    if protocol not in PROTOCOLS:
        raise LambdaProtocolError(f"lambda_protocol must be one of {PROTOCOLS}, got {protocol!r}")
    recipes = recipes_with_lambda(config)
    if not recipes:
        return
    if protocol == "fixed":
        for r in recipes:
            if r not in config.lambda_fixed or not np.isfinite(float(config.lambda_fixed[r])):
                raise LambdaProtocolError(f"lambda_protocol='fixed' needs a finite lambda_fixed.{r} "
                                          f"(recipes {recipes} use λ)")
        return
    for r in recipes:
        values = grid(config, r)
        if not values or not all(np.isfinite(values)):
            raise LambdaProtocolError(f"the λ grid of {r!r} must be a non-empty tuple of finite numbers, got "
                                      f"{tuple(values)} (config.lambdas / config.weighted_lambdas)")
    if protocol == "source_validation" and not pseudo_targets(config):
        raise LambdaProtocolError(
            "lambda_protocol='source_validation' chooses λ on a labeled language other than the source, but "
            f"labeled_languages={tuple(config.labeled_languages)} has none with unlabeled text besides "
            f"{config.source_language!r}; "
            "add one (e.g. labeled=english+hindi) or use lambda_protocol='fixed'")


def describe(config) -> str:
    """One sentence for results tables: which protocol chose λ, on what."""
    p = config.lambda_protocol
    if p == "fixed":
        values = ", ".join(f"{r}={fixed_value(config, r):g}" for r in recipes_with_lambda(config))
        return f"λ protocol: fixed ({values}; no labels read)."
    if p == "source_validation":
        return (f"λ protocol: source_validation (best mean validation ROUGE-L on the labeled languages "
                f"{', '.join(pseudo_targets(config))} as pseudo-targets; no target-language labels read).")
    return ("λ protocol: target_oracle (chosen on each target's gold validation summaries: an oracle upper "
            "bound, not zero-shot).")


def compose_grid(config, modules: dict, recipe: str, target: str, lams) -> peft.PeftModule:
    """All λ of a recipe for `target` as one batched module (one vmapped composition)."""
    task = modules[f"task/{config.source_language}"]
    lang_t, lang_s = modules[f"lang/{target}"], modules[f"lang/{config.source_language}"]
    if recipe == "weighted":
        return compose.combine_grid([task, lang_t], [[l, 1.0 - l] for l in lams], config.strategy)
    return compose.combine_grid([task, lang_t, lang_s], [[1.0, l, -l] for l in lams], config.strategy)


def sweep(ctx, recipe: str, language: str, lams: list[float]) -> list[float]:
    """Validation ROUGE-L of each λ when `language` plays the target; one decode pass over all λ."""
    examples = ctx.examples(language, "validation", ctx.config.eval.n_validation)
    n, refs = len(examples), [ex["summary"] for ex in examples]
    composed = compose_grid(ctx.config, ctx.modules, recipe, language, lams)
    rows = np.repeat(np.arange(len(lams)), n)  # text g*n + i: example i under λ_g
    preds = ctx.decoder([ex["text"] for ex in examples] * len(lams), composed, rows=rows)[0]
    return [ctx.scoring.rouge(preds[g * n:(g + 1) * n], refs, language)["rougeL"] for g in range(len(lams))]


def select_on_target(ctx, target: str) -> dict:
    """target_oracle: {recipe: {lambdas, rougeL, best}} on the target's own validation split."""
    out = {}
    if f"lang/{target}" not in ctx.modules:  # no language module: its λ recipes are skipped
        return out
    for recipe in recipes_with_lambda(ctx.config):
        lams = grid(ctx.config, recipe)
        scores = sweep(ctx, recipe, target, lams)
        out[recipe] = {"lambdas": lams, "rougeL": scores, "best": lams[int(np.argmax(scores))]}
    return out


def select_on_sources(ctx) -> dict:
    """source_validation: {recipe: {lambdas, rougeL (mean), per_language, best}} over the pseudo-targets."""
    out = {}
    for recipe in recipes_with_lambda(ctx.config):
        lams = grid(ctx.config, recipe)
        per_language = {lang: sweep(ctx, recipe, lang, lams) for lang in pseudo_targets(ctx.config)}
        mean = np.mean(list(per_language.values()), axis=0).tolist()
        out[recipe] = {"lambdas": lams, "rougeL": mean, "per_language": per_language,
                       "best": lams[int(np.argmax(mean))]}
    return out


def chosen(config, selection: dict | None, recipe: str) -> float | None:
    """The λ a recipe uses on test (None for recipes without λ)."""
    if recipe not in LAMBDA_RECIPES:
        return None
    if config.lambda_protocol == "fixed":
        return fixed_value(config, recipe)
    return selection[recipe]["best"]


def sweeps_for_report(selections: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{recipe: {language: [(λ, validation ROUGE-L)]}} for the sweep tables and plot.

    `selections` is {target: selection} (target_oracle) or {"source": selection} (source_validation,
    whose languages are the pseudo-targets).
    """
    by_recipe: dict[str, dict] = {}
    for key, selection in selections.items():
        for recipe, r in selection.items():
            per_language = r.get("per_language", {key: r["rougeL"]})
            for lang, scores in per_language.items():
                by_recipe.setdefault(recipe, {})[lang] = list(zip(r["lambdas"], scores))
    return by_recipe
