"""The Colab notebook: its setup cell inside and outside a checkout, a run that trains from an empty
workdir and shows its plots, the λ slider and its static fallback; and library plots that leave the
caller's matplotlib backend alone."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "language_task_arithmetic.ipynb"

# Smaller than configs/demo.py:runlocal, so the whole notebook trains and runs in a couple of minutes:
# fewer steps and articles change the numbers, not the code path.
SHRINK = """
config.base.pretrain.steps = 8
config.lang_train.num_steps = config.task_train.num_steps = 4
config.world.n_validation = config.world.n_test = config.eval.n_validation = config.eval.n_test = 8
config.eval.bootstrap_samples = 100
"""


def _cell_index(nb, text: str) -> int:
    """Index of the one code cell whose source contains `text`."""
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    assert len(found) == 1, (text, found)
    return found[0]


def _outputs(cell) -> tuple[str, list[dict]]:
    """(all printed text, all rich data bundles) of one executed cell."""
    text = "".join(o.get("text", "") for o in cell.outputs)
    return text, [o.get("data", {}) for o in cell.outputs]


def test_notebook_trains_from_an_empty_workdir_and_shows_its_plots(tmp_path, monkeypatch):
    import nbclient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(_cell_index(nb, "WORKDIR = ") + 1, nbformat.v4.new_code_cell(SHRINK))
    slider = _cell_index(nb, "def show_lambda")
    # The static fallback, in the same kernel: with ipywidgets unimportable the slider cell prints instead.
    nb.cells.append(nbformat.v4.new_code_cell('sys.modules["ipywidgets"] = None'))
    nb.cells.append(nbformat.v4.new_code_cell(nb.cells[slider].source))
    workdir = tmp_path / "empty_workdir"
    monkeypatch.setenv("PEFT_JAX_NOTEBOOK_WORKDIR", str(workdir))  # the kernel inherits these
    # The second language and task stages compile the same steps as the first: a compilation cache
    # lets them reuse those executables (a third off the run's time here).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    assert (workdir / "stages" / "task__syn_en.json").exists()  # it trained here, nothing was reused
    run_text, _ = _outputs(nb.cells[_cell_index(nb, "rows = experiment.run(")])
    assert "[stage] lang/syn_mod: running" in run_text and "| syn_mod |" in run_text
    images = [d for c in nb.cells if c.cell_type == "code" for d in _outputs(c)[1] if "image/png" in d]
    # The pipeline's two plots, and the pyplot one drawn after training in the notebook's own backend.
    assert len(images) == 3
    pyplot_cell = nb.cells[_cell_index(nb, "plt.show()")]
    assert any("image/png" in d for d in _outputs(pyplot_cell)[1])
    sweep_text, _ = _outputs(nb.cells[_cell_index(nb, "combine_grid")])
    assert "λ=1.5" in sweep_text and "ROUGE-L" in sweep_text
    # With ipywidgets (the `notebook` extra) the slider is a widget; the fallback printed every λ of the grid.
    widget = any("application/vnd.jupyter.widget-view+json" in d for d in _outputs(nb.cells[slider])[1])
    assert widget == (importlib.util.find_spec("ipywidgets") is not None)
    fallback_text, _ = _outputs(nb.cells[-1])
    assert "static view" in fallback_text and all(f"λ={lam:.2f}" in fallback_text for lam in (0.0, 1.5))
    recipes_text, _ = _outputs(nb.cells[_cell_index(nb, "multi_source")])
    assert "multi_source:" in recipes_text and "reference:" in recipes_text


def _setup_cell(repo_url: str | None) -> str:
    """The notebook's first code cell as a script, with REPO_URL set unless None (the shipped placeholder)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = nb.cells[_cell_index(nb, "REPO_URL = ")].source
    line = next(l for l in source.splitlines() if l.startswith("REPO_URL = "))
    return source if repo_url is None else source.replace(line, f"REPO_URL = {repo_url!r}")


def _run_setup(repo_url: str | None, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    script = _setup_cell(repo_url) + "\nprint('PINS', json.dumps(runtime_pins()))\n"
    return subprocess.run([sys.executable, "-c", "import json\n" + script], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_setup_cell_outside_a_checkout_asks_for_the_repository_url(tmp_path):
    result = _run_setup(None, tmp_path)
    assert result.returncode != 0
    assert "REPO_URL is still the placeholder" in result.stderr
    assert not (tmp_path / "peft_jax").exists()


def test_setup_cell_clones_outside_a_checkout_and_pins_the_runtime_jax(tmp_path):
    """A stand-in repository (peft_jax is installed here, so nothing is pip-installed): cloned, then the root."""
    repo = tmp_path / "origin"
    (repo / "peft_jax").mkdir(parents=True)
    (repo / "setup.py").write_text("")
    (repo / "peft_jax" / "__init__.py").write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "stand-in"]):
        subprocess.run(git + args, check=True)
    colab = tmp_path / "content"
    colab.mkdir()
    result = _run_setup(repo.as_uri(), colab)
    assert result.returncode == 0, result.stderr
    assert f"root: {colab / 'peft_jax'}" in result.stdout
    assert (colab / "peft_jax" / "setup.py").exists()
    import jax
    import numpy as np
    pins = json.loads(result.stdout.split("PINS", 1)[1])
    assert f"jax=={jax.__version__}" in pins and f"numpy=={np.__version__}" in pins
    # Run again (Colab's "Run all" twice): the clone is reused, not redone.
    assert _run_setup(repo.as_uri(), colab).returncode == 0


def test_training_and_benchmark_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """In a fresh process with a non-Agg backend chosen (as a notebook chooses its inline one)."""
    script = f"""
import importlib.util, sys
import matplotlib
matplotlib.use("svg")
spec = importlib.util.spec_from_file_location("train_config", {str(ROOT / "configs" / "train.py")!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
c = module.get_config("model=palm_tiny,peft=lora,source=tokens")
c.num_steps, c.batch_size, c.log_every, c.eval_every, c.progress_bar = 2, 4, 1, 0, False
c.data.input_length, c.data.num_examples = 16, 8
from peft_jax.train import loop
loop.train(c, {str(tmp_path)!r})
from peft_jax.bench import plots
from peft_jax.bench.tables import Row
plots.plot([Row("train/lora", "tokens_per_s", 2.0, 1.0)], [], {str(tmp_path / "benchmark.png")!r})
print("BACKEND", matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "BACKEND svg False" in result.stdout
    for name in ("loss_curve.png", "benchmark.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_loss_figure_is_a_figure_and_none_without_losses():
    from matplotlib.figure import Figure

    from peft_jax.train import reporting

    assert reporting.loss_figure({}) is None
    fig = reporting.loss_figure({1: {"loss": 2.0}, 2: {"loss": 1.5, "eval_loss": 1.7}})
    assert isinstance(fig, Figure) and fig.axes[0].get_xlabel() == "step"
