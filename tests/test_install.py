"""Packaging: lower-bounded requirements, optional extras, and installs into fresh environments.

The tests marked `install` create venvs (no system site packages) and pip-install peft_jax into
them, minutes each; they run with `bash launch/test.sh -m install`. The others read setup.py and
import the package with the optional dependencies hidden, in seconds.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import runpy
import shutil
import subprocess
import sys
import textwrap

import pytest
import setuptools

from peft_jax import extras

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("transformers", "jieba", "pythainlp", "fugashi", "unidic_lite", "Stemmer", "langid",
            "tensorflow_datasets", "torch", "peft", "nbclient", "ipykernel", "ipywidgets")
# An older jax than the tested set's, at setup.py's lower bound: another project's environment.
OTHER_JAX = "0.10.0"


def _setup_kwargs(monkeypatch) -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (it is run, nothing is built)."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {_name(name): version for name, version in pins}


def test_requirements_are_lower_bounds_without_jaxlib(monkeypatch):
    kw = _setup_kwargs(monkeypatch)
    every = kw["install_requires"] + [r for reqs in kw["extras_require"].values() for r in reqs]
    assert not [r for r in every if "==" in r or "<" in r], "pins belong in constraints.txt"
    assert "jaxlib" not in {_name(r) for r in every}  # jax brings the jaxlib that matches it
    assert {"tpu", "cuda12", "multilingual", "hf", "notebook", "test"} <= set(kw["extras_require"])
    core = {_name(r) for r in kw["install_requires"]}
    assert not core & {_name(m) for m in OPTIONAL} and "pystemmer" not in core and "unidic-lite" not in core
    assert kw["python_requires"] == ">=3.11" and kw["license"] == "Apache-2.0"


def test_test_extra_holds_every_other_extra_but_the_accelerators_and_cloud_backends(monkeypatch):
    """The suite needs every extra except jax's accelerator plugins and the gs:// backends (it runs gs://
    workdirs against a mocked file system)."""
    extras_require = _setup_kwargs(monkeypatch)["extras_require"]
    test = set(extras_require["test"])
    assert {"tpu", "cuda12", "gcs"} <= set(extras_require)
    for name, reqs in extras_require.items():
        if name not in ("test", "tpu", "cuda12", "gcs"):
            assert set(reqs) <= test, name


def test_constraints_pin_every_requirement_and_satisfy_its_bound(monkeypatch):
    from packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel
    kw = _setup_kwargs(monkeypatch)
    pins = _constraints()
    assert "peft-jax" not in pins and "jaxlib" in pins
    for requirement in kw["install_requires"] + kw["extras_require"]["test"]:
        req = Requirement(requirement)
        assert _name(req.name) in pins, requirement
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), (requirement, pins[_name(req.name)])


def test_every_optional_import_names_its_extra():
    assert set(extras.EXTRA_OF.values()) <= {"multilingual", "hf", "tfds"}
    assert extras.install_hint("pythainlp.tokenize") == 'pip install "peft_jax[multilingual]"'
    with pytest.raises(KeyError, match="not an optional dependency"):
        extras.install_hint("numpy")


def test_a_missing_extra_is_a_clear_error(monkeypatch):
    rouge = importlib.import_module("peft_jax.metrics.rouge")  # the package exports a function `rouge`
    segmenters = importlib.import_module("peft_jax.metrics.segmenters")
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` fail as if not installed
    segmenters.jieba.cache_clear()
    try:
        with pytest.raises(extras.MissingExtraError, match=r'Chinese ROUGE.*pip install "peft_jax\[multilingual\]"'):
            rouge.segment_chinese("我们")
    finally:
        segmenters.jieba.cache_clear()


def test_a_broken_optional_package_keeps_its_own_error(monkeypatch):
    def broken(name):  # the package is there, one of its own dependencies is not
        raise ModuleNotFoundError("No module named 'a_dependency_of_jieba'", name="a_dependency_of_jieba")

    monkeypatch.setattr(extras.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError) as caught:
        extras.require("jieba", "Chinese ROUGE segmentation")
    assert not isinstance(caught.value, extras.MissingExtraError)


def test_the_core_imports_with_every_optional_package_hidden():
    # A meta-path finder that refuses them, as if uninstalled (a None in sys.modules would confuse
    # libraries such as scipy that look there for torch).
    hide = textwrap.dedent(f"""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Hide())
    """)
    code = (hide +
            "import peft_jax, peft_jax.models, peft_jax.peft, peft_jax.compose, peft_jax.train\n"
            "import peft_jax.decode, peft_jax.metrics, peft_jax.evaluation, peft_jax.pipeline\n"
            "print(peft_jax.generate.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_license_and_notice_ship_with_the_package(monkeypatch):
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert "peft_jax/resources/typology.tsv" in notice and "CC BY-SA 4.0" in notice
    assert set(_setup_kwargs(monkeypatch)["license_files"]) == {"LICENSE", "NOTICE"}


# --------------------------------------------------------------------------- fresh venvs

# Builds a tiny model, saves two LoRA modules, loads and composes them, and decodes with the mix.
SMOKE = textwrap.dedent("""
    import os, sys, tempfile
    import jax, numpy as np
    import peft_jax
    from peft_jax import compose, peft
    from peft_jax.models import get_model

    model = get_model("mt5_tiny", vocab_size=64)
    params = model.init(jax.random.key(0))
    modules = [peft.init(model, peft.LoraConfig(rank=4, alpha=8), jax.random.key(i)) for i in (1, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"module_{i}.peft") for i in range(2)]
        for path, module in zip(paths, modules):
            peft.save(path, module, {"base_fingerprint": peft.fingerprint(params)})
        loaded = [peft.load(path, base_params=params) for path in paths]
    mixed = compose.combine(loaded, [0.5, 0.5])
    out = peft_jax.generate(model, params, {"encoder_input_tokens": np.ones((2, 8), np.int32)},
                            peft=mixed, max_decode_len=5)
    assert np.asarray(out["tokens"]).shape == (2, 5), out["tokens"].shape
    print("decoded with jax", jax.__version__)
""")


def _source(tmp_path: pathlib.Path) -> pathlib.Path:
    """What an sdist holds, copied: pip builds in the source tree and must not write into the checkout."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "peft_jax", src / "peft_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md", "LICENSE", "NOTICE", "constraints.txt"):
        shutil.copy(ROOT / name, src / name)
    return src


def _venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """A fresh venv without system site packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    return tmp_path / "venv" / "bin" / "python"


def _run(python: pathlib.Path, *args: str, cwd: pathlib.Path, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _version(python: pathlib.Path, package: str, cwd: pathlib.Path) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return _run(python, "-c", code, cwd=cwd).strip()


@pytest.mark.install
def test_install_keeps_the_environments_compatible_jax(tmp_path):
    src, python = _source(tmp_path), _venv(tmp_path)
    _run(python, "-m", "pip", "install", "-q", f"jax=={OTHER_JAX}", f"jaxlib=={OTHER_JAX}", cwd=tmp_path)
    _run(python, "-m", "pip", "install", "-q", str(src), cwd=tmp_path)
    assert _version(python, "jax", tmp_path) == OTHER_JAX
    assert _version(python, "jaxlib", tmp_path) == OTHER_JAX
    # The declared lower bound is not just accepted by pip: the core works with it.
    assert f"decoded with jax {OTHER_JAX}" in _run(python, "-c", SMOKE, cwd=tmp_path)


@pytest.mark.install
def test_core_install_composes_saved_modules_and_decodes(tmp_path):
    src, python = _source(tmp_path), _venv(tmp_path)
    _run(python, "-m", "pip", "install", "-q", "-c", str(src / "constraints.txt"), str(src), cwd=tmp_path)
    assert "decoded with jax" in _run(python, "-c", SMOKE, cwd=tmp_path)
    absent = _run(python, "-c", "import importlib.util as u; "
                  f"print([m for m in {OPTIONAL!r} if u.find_spec(m) is not None])", cwd=tmp_path)
    assert absent.strip() == "[]", f"the core install brought optional packages: {absent}"
    check = ("import importlib\nfrom peft_jax import extras\n"
             "rouge = importlib.import_module('peft_jax.metrics.rouge')\n"
             "try:\n    rouge.segment_chinese('我们')\nexcept extras.MissingExtraError as e:\n    print(e)\n")
    assert 'pip install "peft_jax[multilingual]"' in _run(python, "-c", check, cwd=tmp_path)
