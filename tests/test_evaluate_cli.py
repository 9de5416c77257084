"""launch/evaluate.py end to end on a tiny random base, the real XL-Sum samples and a real tokenizer."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

from peft_jax import data, evaluate
from peft_jax import peft as P
from peft_jax.models import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "evaluate.py")


def _run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "evaluate.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _config(test_data, **overrides):
    """configs/evaluate.py:runlocal on the in-repo test data, with dotted-key overrides."""
    spec = importlib.util.spec_from_file_location("configs_evaluate", CONFIG)
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config("runlocal")
    config.data.xlsum_dir = str(test_data / "xlsum")
    config.data.tokenizer = str(test_data / "tokenizers" / "t5_english_32k.model")
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def test_cli_writes_predictions_per_language_tables_and_plot(test_data, tmp_path):
    result = _run_cli(f"--config={CONFIG}:runlocal", f"--workdir={tmp_path}",
                      f"--config.data.xlsum_dir={test_data / 'xlsum'}", "--config.data.languages=en,hi,zh-CN",
                      f"--config.data.tokenizer={test_data / 'tokenizers' / 't5_english_32k.model'}")
    assert result.returncode == 0, result.stderr[-3000:]
    langs = ["english", "hindi", "chinese_simplified"]
    for lang in langs:
        lines = (tmp_path / "predictions" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        gold = list(data.xlsum(test_data / "xlsum", lang, "test"))[:2]
        records = [json.loads(line) for line in lines]
        assert [r["id"] for r in records] == [g["id"] for g in gold]
        assert [r["reference"] for r in records] == [g["summary"] for g in gold]
        assert all(isinstance(r["prediction"], str) and 1 <= r["num_tokens"] <= 16 for r in records)
    with open(tmp_path / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == evaluate.CSV_COLUMNS
    assert [r["language"] for r in rows] == langs and {r["system"] for r in rows} == {"base"}
    for r in rows:
        for key in ("rouge1", "rouge2", "rougeL"):
            assert 0 <= float(r[key + "_low"]) <= float(r[key]) <= float(r[key + "_high"]) <= 1
        assert 0 <= float(r["wrong_language_rate"]) <= 1 and int(r["num_examples"]) == 2
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert all(f"| {lang} | base | 2 |" in table for lang in langs) and table in result.stdout
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["data"]["languages"] == "en,hi,zh-CN"


@pytest.fixture(scope="module")
def decoder_module(test_data, tmp_path_factory):
    """A LoRA module file (non-zero B) for the random palm_tiny base the config builds."""
    tok = data.load_tokenizer(test_data / "tokenizers" / "t5_english_32k.model")
    model = get_model("palm_tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    params = model.init(jax.random.PRNGKey(0))
    module = P.init(model, P.LoraConfig(rank=2), jax.random.PRNGKey(1))
    module = module.replace(params=jax.tree.map(lambda x: x + 0.5, module.params))
    path = str(tmp_path_factory.mktemp("modules") / "task_en.safetensors")
    P.save(path, module, {"base_fingerprint": P.fingerprint(params)})
    return path


def _outputs(workdir):
    names = ["results.csv", "results.md", "results.png", "config.json", "predictions/english.jsonl"]
    return {n: (workdir / n).read_bytes() for n in names}


def test_evaluation_is_deterministic_and_applies_the_modules(test_data, decoder_module, tmp_path):
    kw = {"base.preset": "palm_tiny", "data.languages": "english", "decode.method": "beam", "decode.num_beams": 2,
          "decode.max_input_len": 48, "decode.max_decode_len": 8}
    rows = evaluate.evaluate(_config(test_data, modules=decoder_module, **kw), str(tmp_path / "a"))
    evaluate.evaluate(_config(test_data, modules=decoder_module, **kw), str(tmp_path / "b"))
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    assert rows[0]["system"] == "task_en" and rows[0]["num_examples"] == 2
    evaluate.evaluate(_config(test_data, **kw), str(tmp_path / "base"))
    with_module = (tmp_path / "a" / "predictions" / "english.jsonl").read_text()
    assert with_module != (tmp_path / "base" / "predictions" / "english.jsonl").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"data.tokenizer": ""}, "data.tokenizer"),
    ({"data.languages": " , "}, "data.languages"),
    ({"data.languages": "klingon"}, "klingon"),
    ({"decode.batch_size": 0}, "batch_size"),
    ({"data.xlsum_dir": "/nonexistent/xlsum"}, "/nonexistent/xlsum"),
    ({"modules": "/nonexistent/task.safetensors"}, "does not exist"),
])
def test_bad_settings_raise_errors_that_name_them(test_data, tmp_path, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluate.evaluate(_config(test_data, **overrides), str(tmp_path))


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    result = _run_cli(f"--config={CONFIG}:runlocal", f"--workdir={tmp_path}", "--config.data.tokenizer=")
    assert result.returncode != 0
    assert "error: set --config.data.tokenizer" in result.stderr
    assert "Traceback" not in result.stderr
