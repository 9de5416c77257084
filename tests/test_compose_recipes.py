"""Recipes (add, weighted, analogy, multi-source, stack) and related-language selection."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import compose, languages, peft
from peft_jax import tree as tu
from peft_jax.compose import related
from peft_jax.compose.checks import CompositionError
from peft_jax.models import get_model
from peft_jax.peft.module import AdapterConfig, LoraConfig, Module

SHAPES = {"decoder/layers_0/attention/value": (5, 6), "decoder/layers_0/mlp/wi_0": (5, 8)}


def lora(seed, rank=2, alpha=4.0, **meta):
    rng = np.random.default_rng(seed)
    flat = {p: {"lora_a": jnp.asarray(rng.normal(size=(i, rank)), jnp.float32),
                "lora_b": jnp.asarray(rng.normal(size=(rank, o)), jnp.float32)} for p, (i, o) in SHAPES.items()}
    return Module(params=tu.unflatten(flat), config=LoraConfig(rank=rank, alpha=alpha),
                  metadata_json=json.dumps({"base_fingerprint": "b", **meta}))


def delta64(module):
    s = module.config.scaling
    flat = tu.flatten(module.params, is_leaf=lambda x: isinstance(x, dict) and "lora_a" in x)
    return {p: s * np.asarray(n["lora_a"], np.float64) @ np.asarray(n["lora_b"], np.float64) for p, n in flat.items()}


def same_params(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


# ------------------------------------------------------------------------------------------ recipes
def test_recipes_are_the_stated_weighted_sums():
    task, lang_tgt, lang_src = lora(1), lora(2), lora(3)
    assert same_params(compose.add(task, lang_tgt), compose.combine([task, lang_tgt], [1, 1]))
    assert same_params(compose.weighted(task, lang_tgt, 0.3), compose.combine([task, lang_tgt], [0.3, 0.7]))
    assert same_params(compose.analogy(task, lang_tgt, lang_src, 0.5),
                       compose.combine([task, lang_tgt, lang_src], [1, 0.5, -0.5]))
    recipe = compose.analogy(task, lang_tgt, lang_src, 0.5).metadata["composition"]["recipe"]
    assert recipe == {"name": "analogy", "lam": 0.5}


def test_exact_analogy_subtracts_the_source_language():
    task, lang_tgt, lang_src = lora(1), lora(2, rank=3, alpha=3.0), lora(3)
    got = delta64(compose.analogy(task, lang_tgt, lang_src, 0.8, strategy="concat"))
    for p in SHAPES:
        ref = delta64(task)[p] + 0.8 * (delta64(lang_tgt)[p] - delta64(lang_src)[p])
        assert np.linalg.norm(got[p] - ref) / np.linalg.norm(ref) <= 1e-6


def test_stack_of_adapters_equals_applying_them_together():
    model = get_model("mt5_tiny", num_layers=1, num_decoder_layers=1)
    params = model.init(jax.random.key(0))
    lang, task = (peft.init(model, AdapterConfig(reduction_factor=8), jax.random.key(k)) for k in (1, 2))
    lang, task = (m.replace(params=jax.tree.map(lambda x, s=s: x + s, m.params))
                  for s, m in ((0.2, lang), (-0.1, task)))
    stacked = compose.stack(lang, task)
    assert [m.metadata["composition"]["recipe"]["name"] for m in stacked] == ["stack", "stack"]
    batch = {"encoder_input_tokens": jnp.array([[5, 6, 7, 1]]), "decoder_input_tokens": jnp.array([[0, 5, 6, 7]])}
    np.testing.assert_array_equal(model.logits(params, batch, peft=stacked),
                                  model.logits(params, batch, peft=[lang, task]))
    # Order matters for adapters (MAD-X: language first); the reverse stack computes something else.
    assert not np.allclose(model.logits(params, batch, peft=compose.stack(task, lang)),
                           model.logits(params, batch, peft=stacked), atol=1e-6)


# ------------------------------------------------------------------------------------------ multi-source
def test_multi_source_by_family_averages_related_task_modules_plus_language_module():
    tasks = {"hindi": lora(1), "english": lora(2), "marathi": lora(3), "japanese": lora(4), "nepali": lora(5)}
    lang_ne = lora(6)
    out = compose.multi_source(tasks, "ne", by="family", k=2, lang_module=lang_ne, lang_weight=0.5)
    recipe = out.metadata["composition"]["recipe"]
    # Nepali is excluded (zero-shot); its two nearest Indo-European relatives are the sources.
    sources = recipe["sources"]
    assert set(sources) <= {"hindi", "marathi", "english"} and len(sources) == 2 and "nepali" not in sources
    assert sources == compose.related_languages("nepali", ["hindi", "english", "marathi"], by="family", k=2)
    ref = compose.combine([tasks[s] for s in sources] + [lang_ne], [0.5, 0.5, 0.5])
    assert same_params(out, ref) and out.metadata["composition"]["weights"] == [0.5, 0.5, 0.5]


def test_multi_source_weights_mapping_and_similarity():
    tasks = {"hindi": lora(1), "marathi": lora(3), "bengali": lora(4)}
    out = compose.multi_source(tasks, "nepali", by="genus", weights={"hindi": 0.7, "marathi": 0.2, "bengali": 0.1})
    assert out.metadata["composition"]["recipe"]["source_weights"] == [
        {"hindi": 0.7, "marathi": 0.2, "bengali": 0.1}[s] for s in out.metadata["composition"]["recipe"]["sources"]]
    sim = compose.multi_source(tasks, "nepali", by="typology", k=3, weights="similarity")
    w = sim.metadata["composition"]["recipe"]["source_weights"]
    sims = [1 - compose.typological_distance("nepali", s) for s in sim.metadata["composition"]["recipe"]["sources"]]
    np.testing.assert_allclose(w, np.array(sims) / sum(sims), rtol=1e-12)
    assert sorted(w, reverse=True) == w  # nearest first


def test_multi_source_refusals():
    tasks = {"english": lora(1), "french": lora(2)}
    with pytest.raises(CompositionError, match="no candidate.*Sino-Tibetan"):
        compose.multi_source(tasks, "chinese_simplified", by="family")
    with pytest.raises(CompositionError, match="pass k"):
        compose.multi_source(tasks, "spanish", by="typology")
    with pytest.raises(CompositionError, match=r"no entry for selected source language\(s\) \['french'\]"):
        compose.multi_source(tasks, "spanish", by="family", weights={"english": 1.0})


# ------------------------------------------------------------------------------------------ related languages
def _table_by_hand():
    """Independent parse of typology.tsv: {name: syntax bits as a list of ints}."""
    rows = [line.split("\t") for line in related.TYPOLOGY_PATH.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    header = rows[0]
    return {r[0]: [int(c) for c in r[header.index("syntax")]] for r in rows[1:]}


def test_typology_table_covers_every_known_language():
    table = _table_by_hand()
    table_names = {r.split("\t")[0] for r in languages.TABLE_PATH.read_text(encoding="utf-8").splitlines()[1:] if r}
    assert set(table) == table_names
    assert {lang.name for lang in languages.xlsum_languages()} <= set(table)
    assert all(len(bits) == 103 for bits in table.values())


def test_typological_distance_is_cosine_distance_of_the_table_rows():
    table = _table_by_hand()
    for a, b in [("hindi", "urdu"), ("english", "japanese"), ("swahili", "kirundi")]:
        u, v = table[a], table[b]
        dot = sum(x * y for x, y in zip(u, v))
        ref = 1 - dot / math.sqrt(sum(u) * sum(v))
        assert compose.typological_distance(a, b) == pytest.approx(ref, abs=1e-12)
        assert compose.typological_distance(b, a) == pytest.approx(ref, abs=1e-12)
    assert compose.typological_distance("sr-Latn", "sr-Cyrl") == 0.0  # one language, two scripts
    assert compose.typological_distance("hindi", "urdu") < compose.typological_distance("hindi", "english")
    both = compose.typology_vector("hindi", "syntax+phonology")
    assert both.shape == (103 + 28,)


def test_related_languages_by_family_genus_script_and_typology():
    cands = ["english", "fr", "ja", "hindi", "mr", "es", "serbian_latin", "ru"]
    by_family = compose.related_languages("portuguese", cands, by="family")
    assert set(by_family) == {"english", "fr", "hindi", "mr", "es", "serbian_latin", "ru"}
    assert by_family[0] in ("es", "fr")  # Romance first: nearest by syntax
    assert compose.related_languages("portuguese", cands, by="genus") == sorted(
        ["fr", "es"], key=lambda c: compose.typological_distance("portuguese", c))
    assert compose.related_languages("serbian_cyrillic", cands, by="script") == ["ru"]
    nearest = compose.related_languages("hindi", [lang.name for lang in languages.xlsum_languages()],
                                        by="typology", k=3)
    assert len(nearest) == 3 and "hindi" not in nearest and "urdu" in nearest
    assert compose.related_languages("hindi", ["hindi", "hi"][:1], by="family") == []  # the target is never a source


def test_related_languages_refusals():
    with pytest.raises(ValueError, match="by must be one of"):
        compose.related_languages("hindi", ["urdu"], by="continent")
    with pytest.raises(ValueError, match="'hi' and 'hindi' are the same language"):
        compose.related_languages("nepali", ["hi", "hindi"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        compose.related_languages("nepali", ["hindi"], k=0)
    made_up = languages.Language("zorbish_compose_test", None, "zzq", "zzq", "Indo-European", "Indic", "Latn")
    languages.register(made_up)
    with pytest.raises(compose.TypologyError, match="zorbish_compose_test.*no typological vector"):
        compose.related_languages("zorbish_compose_test", ["hindi"], by="typology")
    # By family it still works; languages without a vector rank last.
    assert compose.related_languages("hindi", ["zzq", "mr"], by="family") == ["mr", "zzq"]
