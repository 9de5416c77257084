"""The PyTorch reference side of the benchmark, importable on a plain install (without PyTorch).

PyTorch and HF `peft` are test extras. `make_runner` and `save_checkpoint` import the implementation,
`reference_torch` (`transformers` + HF `peft`), only when the reference side actually runs; without
the extra they raise `ReferenceUnavailableError`, which says how to install it.

This module must not import JAX: the worker that runs it measures PyTorch's memory alone.
"""

from __future__ import annotations

from types import ModuleType

from peft_jax import extras
from peft_jax.bench.worker import Runner

INSTALL_HINT = 'pip install "peft_jax[test]"'
# Packages of the `test` extra whose absence means "not installed" rather than a bug.
_TEST_EXTRA_PACKAGES = ("torch", "peft", "safetensors", "transformers")


class ReferenceUnavailableError(ImportError):
    """PyTorch or HF peft (the `test` extra) is missing, so the reference side cannot run."""


def torch_side() -> ModuleType:
    """The PyTorch implementation module, imported on first use.

    Raises:
      ReferenceUnavailableError: a package of the `test` extra is not installed.
    """
    try:
        from peft_jax.bench import reference_torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        if extras.absent_package(e, _TEST_EXTRA_PACKAGES) is None:  # a bug, not a missing package
            raise
        raise ReferenceUnavailableError(f"the benchmark's reference side needs PyTorch and HF peft, but "
                                        f"{e.name!r} is not installed: {INSTALL_HINT}") from e
    return reference_torch


def make_runner(spec: dict) -> Runner:
    """The reference runner of a job, with PyTorch limited to the job's thread count."""
    return torch_side().make_runner(spec)


def save_checkpoint(spec: dict) -> None:
    """Writes the job's random base checkpoint (safetensors + config.json) unless it is already complete."""
    torch_side().save_checkpoint(spec)
