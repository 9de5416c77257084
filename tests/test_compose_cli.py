"""launch/compose.py: configs load, the CLI composes saved modules exactly as the library does."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import compose, peft
from peft_jax import tree as tu
from peft_jax.peft.module import LoraConfig, Module

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES = {"encoder/layers_0/attention/query": (4, 6), "decoder/layers_0/mlp/wo": (8, 4)}


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return _load(REPO / "launch" / "compose.py", "compose_cli")


def config(name: str, arg=None):
    return _load(REPO / "configs" / "compose" / f"{name}.py", f"compose_config_{name}").get_config(arg)


def lora(seed, **meta):
    rng = np.random.default_rng(seed)
    flat = {p: {"lora_a": jnp.asarray(rng.normal(size=(i, 2)), jnp.float32),
                "lora_b": jnp.asarray(rng.normal(size=(2, o)), jnp.float32)} for p, (i, o) in SHAPES.items()}
    return Module(params=tu.unflatten(flat), config=LoraConfig(rank=2, alpha=4.0),
                  metadata_json=json.dumps({"base_fingerprint": "0123456789abcdef", **meta}))


@pytest.fixture
def saved(tmp_path):
    """Module files of a tiny language-and-task world: {name: (path, module)}."""
    out = {}
    for seed, name in enumerate(["task_en", "lang_sw", "lang_en", "task_hi", "task_mr", "task_ja", "lang_ne"]):
        m = lora(seed, name=name)
        peft.save(tmp_path / f"{name}.safetensors", m)
        out[name] = (str(tmp_path / f"{name}.safetensors"), peft.load(tmp_path / f"{name}.safetensors"))
    return out


def same_params(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def test_every_config_documents_its_run_command():
    for name in ("analogy", "weighted", "multi_source"):
        module = _load(REPO / "configs" / "compose" / f"{name}.py", f"doc_{name}")
        assert f"python launch/compose.py --config=configs/compose/{name}.py" in module.__doc__
        assert module.get_config().recipe == name


def test_cli_analogy_saves_what_the_library_computes(saved, tmp_path):
    out = tmp_path / "runs" / "sum_sw.safetensors"
    args = [sys.executable, str(REPO / "launch" / "compose.py"), "--config=configs/compose/analogy.py:delta",
            f"--config.inputs.task_src={saved['task_en'][0]}", f"--config.inputs.lang_tgt={saved['lang_sw'][0]}",
            f"--config.inputs.lang_src={saved['lang_en'][0]}", "--config.lam=0.5", f"--config.output={out}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = peft.load(out)
    ref = compose.analogy(saved["task_en"][1], saved["lang_sw"][1], saved["lang_en"][1], 0.5, strategy="delta")
    assert same_params(result, ref) and result.metadata == ref.metadata
    assert result.base_fingerprint == "0123456789abcdef"
    assert compose.module_fingerprint(result) in proc.stdout and "strategy delta" in proc.stdout
    # The saved module is never replaced silently.
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_multi_source_config_selects_related_sources(cli, saved, tmp_path):
    cfg = config("multi_source")
    cfg.inputs.tasks = ",".join(f"{lang}={saved[f'task_{code}'][0]}"
                                for lang, code in (("hindi", "hi"), ("marathi", "mr"), ("japanese", "ja"),
                                                   ("english", "en")))
    cfg.inputs.lang = saved["lang_ne"][0]
    cfg.target, cfg.k, cfg.source_weights = "nepali", 2, "hindi=0.6,marathi=0.4"
    cfg.output = str(tmp_path / "multi.safetensors")
    cfg.by = "genus"
    text = cli.run(cfg)
    result = peft.load(cfg.output)
    recipe = result.metadata["composition"]["recipe"]
    assert set(recipe["sources"]) == {"hindi", "marathi"} and "japanese: lora" in text.replace("tasks.", "")
    w = {"hindi": 0.6, "marathi": 0.4}
    ref = compose.combine([saved[f"task_{'hi' if s == 'hindi' else 'mr'}"][1] for s in recipe["sources"]]
                          + [saved["lang_ne"][1]], [w[s] for s in recipe["sources"]] + [1.0])
    assert same_params(result, ref)
    assert "not selected" in text  # japanese and english were loaded but are not Indic


def test_weighted_config_with_svd_reports_dropped_energy(cli, saved, tmp_path):
    cfg = config("weighted", "svd")
    cfg.inputs.task, cfg.inputs.lang = saved["task_en"][0], saved["lang_sw"][0]
    cfg.lam, cfg.options.rank = 0.7, 1
    cfg.output = str(tmp_path / "w.safetensors")
    text = cli.run(cfg)
    result = peft.load(cfg.output)
    assert result.config.rank == 1 and "dropped energy" in text
    assert 0 < result.metadata["composition"]["svd"]["dropped_energy"] < 1


def test_cli_errors_name_the_missing_or_bad_setting(cli, saved, tmp_path):
    cfg = config("analogy")
    cfg.output = str(tmp_path / "x.safetensors")
    cfg.inputs.task_src = saved["task_en"][0]
    with pytest.raises(ValueError, match="needs --config.inputs.lang_tgt=PATH"):
        cli.run(cfg)
    ms = config("multi_source")
    ms.output, ms.inputs.tasks = str(tmp_path / "y.safetensors"), "hindi"
    with pytest.raises(ValueError, match="inputs.tasks: expected 'name=value'.*'hindi'"):
        cli.run(ms)
    cfg.inputs.lang_tgt = cfg.inputs.lang_src = saved["lang_sw"][0]
    cfg.options.density = 0.5  # not an option of the param strategy
    with pytest.raises(compose.CompositionError, match="unknown option"):
        cli.run(cfg)
    assert not os.path.exists(cfg.output)
