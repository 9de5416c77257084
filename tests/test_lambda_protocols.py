"""λ selection: named protocols that read only the labels they say, memory independent of the number of
validation examples, and results equal to decoding each λ on its own."""

import dataclasses
import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from peft_jax import compose, evaluation, peft
from peft_jax.models import get_model
from peft_jax.pipeline import experiment, lambdas

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 64


class _ByteTokenizer:
    """Bytes of the text, folded into the tiny vocabulary: enough to decode and detokenise deterministically."""

    pad_id, eos_id = 0, 1

    def encode(self, text):
        return [2 + b % (VOCAB - 2) for b in text.encode("utf-8")][:24]

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids if i > 1)


@dataclasses.dataclass
class _Ctx:
    """What the selection functions read of the pipeline's Context, with a log of the examples read."""

    config: ml_collections.ConfigDict
    modules: dict
    decoder: evaluation.Decoder
    scoring: evaluation.Scoring
    reads: list = dataclasses.field(default_factory=list)

    def examples(self, lang, split, n):
        self.reads.append((lang, split))
        rng = np.random.default_rng(len(lang))
        return [{"id": str(i), "text": f"{lang} article {i} " + "x" * int(rng.integers(3, 12)),
                 "summary": f"w{2 + i} w{3 + i} w{4 + i}"} for i in range(n)]


def _config(protocol="source_validation", n_validation=3, **overrides):
    c = ml_collections.ConfigDict(dict(
        source_language="english", target_languages=("marathi",), labeled_languages=("english", "hindi"),
        recipes=("task_only", "weighted", "analogy"), strategy="param", lambda_protocol=protocol,
        lambdas=(0.5, 1.0), weighted_lambdas=(0.25, 0.75), lambda_fixed={"weighted": 0.5, "analogy": 1.0},
        eval=dict(n_validation=n_validation)))
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture(scope="module")
def parts():
    model = get_model("mt5_tiny", d_model=16, d_kv=4, d_ff=16, num_heads=4, num_layers=1, num_decoder_layers=1,
                      vocab_size=VOCAB)
    params = model.init(jax.random.PRNGKey(0))
    cfg = peft.LoraConfig(rank=2, targets=r".*attention/(query|value)$")
    modules = {}
    for i, name in enumerate(["task/english", "lang/english", "lang/hindi", "lang/marathi"]):
        m = peft.init(model, cfg, jax.random.PRNGKey(i + 1)).with_metadata(base_fingerprint=peft.fingerprint(params))
        # LoRA B starts at zero: give every module a non-zero delta so that λ changes the output.
        m = m.replace(params=jax.tree.map(lambda x, k=i: x + 0.5 * jax.random.normal(jax.random.PRNGKey(10 + k),
                                                                                      x.shape), m.params))
        modules[name] = m
    settings = ml_collections.ConfigDict(dict(method="greedy", max_decode_len=4, max_input_len=24, batch_size=2))
    decoder = evaluation.Decoder.from_config(model, params, _ByteTokenizer(), settings)
    return modules, decoder


def _ctx(parts, config):
    modules, decoder = parts
    return _Ctx(config, modules, decoder, evaluation.Scoring(tokenization="default", identifier=None))


def test_source_validation_reads_no_target_language_example(parts):
    ctx = _ctx(parts, _config("source_validation"))
    selection = experiment.select(ctx.config, _NoStages(), ctx)
    assert set(selection) == {"source"}
    assert {lang for lang, _ in ctx.reads} == {"hindi"} and {s for _, s in ctx.reads} == {"validation"}
    assert selection["source"]["weighted"]["lambdas"] == [0.25, 0.75]  # weighted's own grid, without task_only
    assert selection["source"]["analogy"]["best"] in (0.5, 1.0)


def test_target_oracle_reads_the_target_and_says_it_is_an_oracle(parts):
    ctx = _ctx(parts, _config("target_oracle"))
    selection = experiment.select(ctx.config, _NoStages(), ctx)
    assert set(selection) == {"marathi"} and set(ctx.reads) == {("marathi", "validation")}
    assert "oracle" in lambdas.describe(ctx.config) and "not zero-shot" in lambdas.describe(ctx.config)


def test_fixed_protocol_reads_no_labels_and_uses_the_configured_values(parts):
    ctx = _ctx(parts, _config("fixed"))
    assert experiment.select(ctx.config, _NoStages(), ctx) == {} and ctx.reads == []
    assert lambdas.chosen(ctx.config, None, "weighted") == 0.5 and lambdas.chosen(ctx.config, None, "analogy") == 1.0
    assert lambdas.chosen(ctx.config, None, "task_only") is None


class _NoStages:
    """Stages that always run (no workdir)."""

    def run(self, name, fn):
        return fn()


def test_sweep_equals_decoding_each_lambda_with_its_own_composed_module(parts):
    ctx = _ctx(parts, _config("target_oracle"))
    lams = [0.5, 1.0]
    scores = lambdas.sweep(ctx, "analogy", "marathi", lams)
    examples = ctx.examples("marathi", "validation", 3)
    refs = [ex["summary"] for ex in examples]
    m = ctx.modules
    for lam, score in zip(lams, scores):
        single = compose.analogy(m["task/english"], m["lang/marathi"], m["lang/english"], lam)
        preds = ctx.decoder([ex["text"] for ex in examples], single)[0]
        assert ctx.scoring.rouge(preds, refs, "marathi")["rougeL"] == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize("n_validation", [3, 9])
def test_sweep_memory_does_not_grow_with_the_number_of_validation_examples(parts, monkeypatch, n_validation):
    """The decoder gets the G-row grid (not G x n rows) and generate sees one decode batch of rows."""
    ctx = _ctx(parts, _config("target_oracle", n_validation=n_validation))
    seen_grid, seen_batch = [], []
    call = evaluation.Decoder.__call__
    generate = evaluation.decoding.generate

    def spy_call(self, texts, peft=None, rows=None):
        seen_grid.append(jax.tree.leaves(peft.params)[0].shape[0])
        return call(self, texts, peft, rows=rows)

    def spy_generate(model, params, batch, peft=None, **kw):
        seen_batch.append(jax.tree.leaves(peft.params)[0].shape[0])
        return generate(model, params, batch, peft, **kw)

    monkeypatch.setattr(evaluation.Decoder, "__call__", spy_call)
    monkeypatch.setattr(evaluation.decoding, "generate", spy_generate)
    lambdas.sweep(ctx, "analogy", "marathi", [0.5, 1.0])
    assert seen_grid == [2]  # λ grid rows, whatever n is
    assert set(seen_batch) == {ctx.decoder.batch_size}


def test_decoder_rows_are_checked_against_the_grid(parts):
    modules, decoder = parts
    grid = compose.combine_grid([modules["task/english"], modules["lang/hindi"]], [[1.0, 0.5], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        decoder(["a", "b"], grid, rows=[0, 2])
    with pytest.raises(ValueError, match="one module row per text: 2 texts"):
        decoder(["a", "b"], grid, rows=[0])
    with pytest.raises(ValueError, match="not batched"):
        decoder(["a"], modules["task/english"], rows=[0])


@pytest.mark.parametrize("change, message", [
    (dict(lambda_protocol="best"), "lambda_protocol must be one of"),
    (dict(lambdas=()), "grid of 'analogy' must be a non-empty tuple"),
    (dict(lambdas=(0.5, float("nan"))), "finite"),
    (dict(labeled_languages=("english",)), "has none with unlabeled text besides 'english'"),
    (dict(lambda_protocol="fixed", lambda_fixed={"weighted": 0.5}), "needs a finite lambda_fixed.analogy"),
])
def test_a_protocol_that_cannot_run_is_refused_before_any_stage(change, message):
    with pytest.raises(lambdas.LambdaProtocolError, match=message):
        lambdas.check(_config(**change))


def test_multi_source_without_a_related_labeled_language_is_skipped_with_a_note(parts):
    modules, _ = parts
    config = _config(multi_source_by="genus", multi_source_k=0)
    ctx = _Ctx(config, {**modules, "task/hindi": modules["task/english"], "lang/japanese": modules["lang/hindi"]},
               None, None)
    note = experiment._skip_note(ctx, "multi_source", "japanese")
    assert note == "skipped: no labeled language shares the genus of japanese"
    assert experiment._skip_note(ctx, "multi_source", "marathi") is None  # hindi: same genus (Indic)
    assert experiment._skip_note(ctx, "analogy", "japanese") is None


def _xlsum(arg):
    spec = importlib.util.spec_from_file_location("cfg_xlsum", ROOT / "configs" / "xlsum_mt5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_xlsum_config_chooses_lambda_without_target_labels():
    for arg in ("", "labeled=six", "runlocal", "runlocal,labeled=english"):
        c = _xlsum(arg)
        assert c.lambda_protocol in ("fixed", "source_validation"), arg
        assert not set(c.target_languages) & set(c.labeled_languages), arg
        lambdas.check(c)
    six = _xlsum("labeled=six")
    assert six.multi_source_by == "typology" and six.multi_source_k == 3 and len(six.target_languages) == 39


@pytest.mark.parametrize("path, arg, message", [
    ("demo.py", "runlocl", "unknown argument 'runlocl'"),
    ("train.py", "model=", "argument 'model' needs a value"),
    ("xlsum_mt5.py", "targets=", "argument 'targets' needs a value"),
    ("xlsum_mt5.py", "labeled=hindi", "must include the source language english"),
])
def test_a_mistyped_config_argument_is_refused(path, arg, message):
    spec = importlib.util.spec_from_file_location("cfg_x", ROOT / "configs" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match=message):
        module.get_config(arg)


def test_a_language_without_unlabeled_text_gets_no_module_and_its_recipes_are_skipped_with_a_note(parts):
    modules, _ = parts
    config = _config("source_validation", target_languages=("marathi", "kirundi"),
                     labeled_languages=("english", "hindi", "oromo"), multi_source_by="typology", multi_source_k=1,
                     data={"text_overrides": {}})
    assert experiment._languages(config) == ["english", "marathi", "hindi"]  # no kirundi, no oromo
    assert lambdas.pseudo_targets(config) == ["hindi"]
    ctx = _Ctx(config, modules, None, None)
    for recipe in ("add", "weighted", "analogy", "stack", "multi_source"):
        assert experiment._skip_note(ctx, recipe, "kirundi") == (
            "skipped: no unlabeled text for kirundi, so no language module (resources/unlabeled_text.tsv)")
    assert experiment._skip_note(ctx, "task_only", "kirundi") is None
    assert lambdas.select_on_target(ctx, "kirundi") == {}
    config.data.text_overrides = {"kirundi": "/data/run.txt"}  # text the user brings counts
    assert "kirundi" in experiment._languages(config)
