"""The evaluation library behind launch/evaluate.py and the pipeline: decoding batches, tables."""

import jax
import numpy as np
import pytest

from peft_jax import evaluation
from peft_jax import peft as P
from peft_jax.models import get_model

TEXTS = ["a cat sat", "the dog ran far away", "birds", "a long walk by the sea", "rain"]


class _CharTokenizer:
    """Letters and space as ids 3..29; 0 pad, 1 EOS."""

    pad_id, eos_id, vocab_size = 0, 1, 32

    def encode(self, text):
        return [3 + (26 if c == " " else ord(c) - ord("a")) for c in text]

    def decode(self, ids):
        ids = list(ids)
        ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
        return "".join(" " if i == 29 else chr(ord("a") + i - 3) if 3 <= i < 29 else f"<{i}>"
                       for i in ids if i != self.pad_id)


class _Decode:
    """A `decode` config block."""

    def __init__(self, batch_size, **options):
        self._values = dict(method="greedy", max_decode_len=6, **options)
        self.max_input_len, self.batch_size = 16, batch_size

    def __contains__(self, key):
        return key in self._values

    def __getitem__(self, key):
        return self._values[key]

    def get(self, key, default=None):
        return self._values.get(key, default)


@pytest.fixture(scope="module", params=["mt5_tiny", "palm_tiny"])
def base(request):
    tok = _CharTokenizer()
    model = get_model(request.param, vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    return model, model.init(jax.random.PRNGKey(0)), tok


def _lora(model, seed):
    module = P.init(model, P.LoraConfig(rank=2), jax.random.PRNGKey(seed))
    return module.replace(params=jax.tree.map(lambda x: x + 0.3 * (seed + 1), module.params))


def test_predictions_do_not_depend_on_the_batch_size(base):
    """The last, partial batch is padded to the batch shape; padding rows never reach the output."""
    model, params, tok = base
    outputs = {bs: evaluation.Decoder.from_config(model, params, tok, _Decode(bs))(TEXTS)
               for bs in (1, 2, len(TEXTS))}
    assert all(len(preds) == len(lengths) == len(TEXTS) for preds, lengths in outputs.values())
    assert outputs[1] == outputs[2] == outputs[len(TEXTS)]


def test_each_row_of_a_batched_module_decodes_like_that_module_alone(base):
    model, params, tok = base
    modules = [_lora(model, seed) for seed in range(len(TEXTS))]
    decoder = evaluation.Decoder.from_config(model, params, tok, _Decode(2))
    batched, _ = decoder(TEXTS, P.batch(modules))
    alone = [decoder([text], module)[0][0] for text, module in zip(TEXTS, modules)]
    assert batched == alone


def test_generate_options_are_only_the_settings_a_config_has():
    d = _Decode(4, num_beams=3, length_penalty=0.6)
    assert evaluation.generate_options(d) == {"method": "greedy", "max_decode_len": 6, "num_beams": 3,
                                              "length_penalty": 0.6}


def test_tables_leave_an_absent_value_empty_and_keep_full_precision_in_csv():
    row = {"language": "hindi", "recipe": "task_only", "lambda": None, "num_examples": 2,
           "wrong_language_rate": 0.5, "rougeLsum": 0.125, "mean_tokens": 3.0}
    for key, value in (("rouge1", 0.123456789), ("rouge2", 0.0), ("rougeL", 0.25)):
        row.update({key: value, key + "_low": value / 2, key + "_high": min(1.0, 2 * value)})
    csv_row = evaluation.csv_text([row], evaluation.RECIPE_CSV_COLUMNS).splitlines()[1].split(",")
    cells = dict(zip(evaluation.RECIPE_CSV_COLUMNS, csv_row))
    assert cells["rouge1"] == "0.123456789" and cells["lambda"] == cells["delta_rougeL"] == ""
    table = evaluation.markdown_table(evaluation.RECIPE_TABLE, [row]).splitlines()
    assert len(table) == 3 and table[1] == "|---" * len(evaluation.RECIPE_TABLE) + "|"
    assert table[2] == "| hindi | task_only |  | 12.3 [6.2, 24.7] | 0.0 [0.0, 0.0] | 25.0 [12.5, 50.0] |  | 50% |  |"
    skipped = {"language": "kirundi", "recipe": "add", "note": "skipped: no unlabeled text for kirundi"}
    assert evaluation.markdown_table(evaluation.RECIPE_TABLE, [skipped]).splitlines()[2] == (
        "| kirundi | add |  |  |  |  |  |  | skipped: no unlabeled text for kirundi |")
    assert np.isclose(float(cells["rougeL_high"]), 0.5)
