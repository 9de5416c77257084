"""The pipeline and evaluation on a gs:// workdir (the mocked bucket of test_remote_workdir.py).

A tiny pipeline run on gs:// is stopped right after its first module stage, resumed there, and must
give the results.csv of an uninterrupted run on a local workdir byte for byte, with nothing written
to a local `./gs:` folder; evaluation reads a base, tokenizer, module and XL-Sum files from the
bucket and writes its results there; without a gs:// backend both stop with a clear error.
"""

import csv
import gzip
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import sys

import jax
import numpy as np
import pytest
from etils import epath
from jax._src import compilation_cache

import peft_jax
from peft_jax import data, fileio
from peft_jax import evaluate as evaluate_lib
from peft_jax.pipeline import experiment, multi_seed

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_multi_seed import _demo  # noqa: E402  (the smallest pipeline config of the tests)
from test_remote_workdir import fake_gcs, no_gs_backend  # noqa: E402,F401  (the mocked bucket, its absence)


def _tiny(**overrides):
    """test_multi_seed's demo config on a random base of one layer per stack, width 16, λ fixed."""
    c = _demo(**overrides)
    c.base.pretrain.overrides.update(d_model=16, d_kv=4, d_ff=16, num_heads=2, num_layers=1, num_decoder_layers=1)
    c.base.pretrain.steps, c.tokenizer.vocab_size, c.lambda_protocol = 0, 400, "fixed"
    return c


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module: the gs:// run reuses the local run's executables
    (its computations are the same), which keeps the two runs to the time of about one."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, compile_cache):
    """An uninterrupted run of the tiny pipeline on a local workdir."""
    workdir = tmp_path_factory.mktemp("local_pipeline")
    rows = experiment.run(_tiny(), str(workdir), log=lambda _: None)
    return workdir, rows


class _Stop(Exception):
    """Stands for a preemption: raised from inside the run once a module stage has finished."""


def _stop_after_first_module(lines: list[str]):
    def log(line: str) -> None:
        lines.append(line)
        if re.match(r"\[stage\] (lang|task)/\S+: finished", line):
            raise _Stop(line)
    return log


def test_pipeline_on_gs_stopped_after_a_module_stage_resumes_there_to_the_local_results(fake_gcs, local_run):
    local, _ = local_run
    url = "gs://bucket/pipeline"
    first = []
    with pytest.raises(_Stop):
        experiment.run(_tiny(), url, log=_stop_after_first_module(first))
    stopped_at = re.match(r"\[stage\] (\S+): finished", first[-1]).group(1)
    store = fake_gcs / "bucket" / "pipeline"
    assert (store / "stages" / f"{stopped_at.replace('/', '__')}.json").is_file()
    assert not [p for p in store.iterdir() if p.name.startswith(".lock")]  # released by the stop
    again = []
    experiment.run(_tiny(), url, log=again.append)
    for stage in ("data", "tokenizer", "base", stopped_at):
        assert f"[stage] {stage}: done earlier, skipped" in again
    assert (store / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
    # Every stage's output is in the bucket; nothing became a local ./gs:/ folder.
    assert not pathlib.Path("gs:").exists() and sorted(os.listdir(".")) == ["bucket_store"]
    assert {"config.json", "data", "tokenizer.model", "base", "train", "predictions", "results.md", "results.csv",
            "results_by_language.png", "stages"} <= {p.name for p in store.iterdir()}
    assert (store / "base" / "pretrain_curve.json").read_bytes() == (local / "base" / "pretrain_curve.json").read_bytes()
    assert sorted(fileio.files_under(epath.Path(store / "data"))) == sorted(fileio.files_under(epath.Path(local / "data")))
    assert (store / "predictions" / "syn_mod.analogy.jsonl").read_bytes() == \
        (local / "predictions" / "syn_mod.analogy.jsonl").read_bytes()


def test_multi_seed_report_on_gs_writes_the_per_seed_rows_and_the_summary_there(fake_gcs, local_run):
    _, rows = local_run
    url = "gs://bucket/seeds"
    per_seed = [{**r, "seed": s} for s in (0, 1) for r in rows]
    multi_seed.write_report(_tiny(seeds=(0, 1)), url, per_seed)
    store = fake_gcs / "bucket" / "seeds"
    assert {"results.md", "results.csv", "summary.csv", "results_by_language.png"} <= {p.name for p in store.iterdir()}
    summary = list(csv.DictReader(io.StringIO((store / "summary.csv").read_text(encoding="utf-8"))))
    assert [(r["recipe"], r["num_seeds"]) for r in summary] == [("task_only", "2"), ("analogy", "2")]
    assert not pathlib.Path("gs:").exists()


def test_text_and_xlsum_readers_read_gs_files_as_they_read_local_ones(fake_gcs, tmp_path):
    docs = [{"text": f"Habari ya {i} leo.", "url": f"https://x/{i}"} for i in range(5)]
    article = {"id": "1", "title": "t", "summary": "s", "text": "a"}
    files = {"mc4/c4-sw.tfrecord-00000-of-00001.json.gz": gzip.compress(
                 "".join(json.dumps(d) + "\n" for d in docs).encode()),
             "text/sw_a.txt": b"one\n\ntwo\n", "text/sw_b.txt": b"three\n",
             "xlsum/swahili_test.jsonl": (json.dumps(article) + "\n").encode()}
    for root in (tmp_path / "local", fake_gcs / "bucket" / "in"):
        for name, content in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
    for where in (str(tmp_path / "local"), "gs://bucket/in"):
        assert list(data.mc4(f"{where}/mc4", "swahili")) == [d["text"] for d in docs]
        assert list(data.sources.text_lines(f"{where}/text/sw_*.txt")) == ["one", "two", "three"]
        lines = data.TextLinesSource(data.sources.expand_paths(f"{where}/text/sw_*.txt"))
        assert [lines[i] for i in (2, 0, 1)] == ["three", "one", "two"]
        assert list(data.xlsum(f"{where}/xlsum", "swahili", "test")) == [article]
        assert data.xlsum_source(f"{where}/xlsum", "swahili", "test")[0] == article
    with pytest.raises(data.MissingDataError, match=r"no file matches the pattern 'gs://bucket/in/text/yo_\*.txt'"):
        data.sources.text_lines("gs://bucket/in/text/yo_*.txt")


def test_a_tokenizer_trained_for_a_gs_training_run_is_kept_in_the_bucket_and_reused(fake_gcs):
    from peft_jax.train import loop
    from test_train_loop import _config_module

    config = _config_module().get_config("model=mt5_tiny,peft=lora,source=synthetic")
    config.data.num_examples = 40
    trained = loop._tokenizer(config, "gs://bucket/train")
    saved = fake_gcs / "bucket" / "train" / "tokenizer.model"
    assert saved.is_file()
    before = saved.stat().st_mtime_ns
    again = loop._tokenizer(config, "gs://bucket/train")  # loaded from the bucket, not trained and uploaded again
    assert saved.stat().st_mtime_ns == before
    assert again.encode("syn text") == trained.encode("syn text") and again.vocab_size == trained.vocab_size
    assert not pathlib.Path("gs:").exists()


def _launch_evaluate():
    from absl import flags  # pylint: disable=import-outside-toplevel
    for name in ("config", "workdir"):  # another launch script loaded in this process defined them already
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    spec = importlib.util.spec_from_file_location("_launch_evaluate", ROOT / "launch" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_config(inputs: str):
    spec = importlib.util.spec_from_file_location("_cfg_evaluate", ROOT / "configs" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    c.base.checkpoint = f"{inputs}/base"
    c.data.tokenizer = f"{inputs}/tokenizer.model"
    c.data.xlsum_dir = f"{inputs}/data/xlsum"
    c.data.languages, c.data.max_examples = "syn_mod", 4
    c.modules = f"{inputs}/train/task_syn_en/final_module,{inputs}/train/lang_syn_mod/final_module"
    c.eval.tokenization, c.eval.identifier = "multilingual", ""
    return c


def test_launch_evaluate_on_gs_reads_its_inputs_from_the_bucket_and_writes_results_there(fake_gcs, local_run,
                                                                                        tmp_path_factory, capsys):
    local, _ = local_run
    data.World(0)  # registers the synthetic languages in this process
    for name in ("base", "tokenizer.model", "data/xlsum", "train/task_syn_en/final_module",
                 "train/lang_syn_mod/final_module"):
        copy = shutil.copytree if (local / name).is_dir() else shutil.copyfile
        os.makedirs(os.path.dirname(fake_gcs / "bucket" / "inputs" / name), exist_ok=True)
        copy(local / name, fake_gcs / "bucket" / "inputs" / name)
    _launch_evaluate()._evaluate(_eval_config("gs://bucket/inputs"), "gs://bucket/eval")
    printed = capsys.readouterr().out
    store = fake_gcs / "bucket" / "eval"
    assert printed.strip() == (store / "results.md").read_text(encoding="utf-8").strip()
    assert {"config.json", "results.md", "results.csv", "results.png", "predictions"} <= {p.name for p in store.iterdir()}
    # The same evaluation from local files writes the same results.
    reference = tmp_path_factory.mktemp("eval_local")
    evaluate_lib.evaluate(_eval_config(str(local)), str(reference))
    assert (store / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert (store / "predictions" / "syn_mod.jsonl").read_bytes() == (reference / "predictions" / "syn_mod.jsonl").read_bytes()
    assert not pathlib.Path("gs:").exists()


def test_pipeline_and_evaluate_on_gs_without_a_backend_stop_by_name_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data.World(0)  # registers the synthetic languages the configs name
    message = r"workdir 'gs://bucket/run': no file-system backend for gs:// is installed.*pip install gcsfs"
    with no_gs_backend():
        with pytest.raises(fileio.WorkdirError, match=message):
            experiment.run(_tiny(), "gs://bucket/run", log=lambda _: None)
        with pytest.raises(fileio.WorkdirError, match=message):
            evaluate_lib.evaluate(_eval_config(str(tmp_path)), "gs://bucket/run")
    assert list(tmp_path.iterdir()) == []


def test_a_hugging_face_checkpoint_on_gs_is_refused_by_name_and_a_native_one_loads(fake_gcs, test_data):
    shutil.copytree(test_data / "checkpoints" / "hf_mt5_safetensors", fake_gcs / "bucket" / "hf_mt5")
    with pytest.raises(peft_jax.models.CheckpointError, match=r"gs://bucket/hf_mt5: only checkpoints written by "
                                                               r"peft_jax .* copy a Hugging Face or t5x checkpoint"):
        peft_jax.load_pretrained("gs://bucket/hf_mt5")
    model, params = peft_jax.load_pretrained(str(test_data / "checkpoints" / "hf_mt5_safetensors"))
    peft_jax.models.native.save("gs://bucket/native", model, params)
    _, loaded = peft_jax.load_pretrained("gs://bucket/native")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
