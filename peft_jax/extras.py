"""Optional dependencies: the pip extra that installs each, and a clear error when one is missing.

The core (`models`, `peft`, `compose`, `train`, `decode`) needs none of them; a feature that does
imports its package through `require`, so a plain `pip install peft_jax` fails at that feature with
the install command instead of a bare `ModuleNotFoundError`. Imports nothing of the package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level import name -> the extra of setup.py that installs it.
EXTRA_OF = {
    "jieba": "multilingual",
    "fugashi": "multilingual",
    "unidic_lite": "multilingual",
    "pythainlp": "multilingual",
    "Stemmer": "multilingual",
    "langid": "multilingual",
    "transformers": "hf",
    "tensorflow_datasets": "tfds",
}


class MissingExtraError(ImportError):
    """A feature needs a package that only an optional extra of peft_jax installs."""


def install_hint(module: str) -> str:
    """The pip command that installs `module` (its extra of peft_jax)."""
    top = module.split(".", 1)[0]
    if top not in EXTRA_OF:
        raise KeyError(f"{top!r} is not an optional dependency of peft_jax; known: {sorted(EXTRA_OF)}")
    return f'pip install "peft_jax[{EXTRA_OF[top]}]"'


def absent_package(err: ImportError, packages=EXTRA_OF) -> str | None:
    """The package of `packages` (top-level names) whose absence raised `err`, or None for any other failure."""
    top = (err.name or "").split(".", 1)[0]
    return top if isinstance(err, ModuleNotFoundError) and top in packages else None


def require(module: str, feature: str, error: type[ImportError] = MissingExtraError) -> ModuleType:
    """Imports `module` for `feature`, or raises `error` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # Only the optional package itself being absent is a missing extra; a broken install
        # (one of its own dependencies missing) keeps its original error.
        if absent_package(err) != module.split(".", 1)[0]:
            raise
        raise error(f"{feature} needs `{module.split('.', 1)[0]}`, which is not installed: "
                    f"{install_hint(module)}") from None
