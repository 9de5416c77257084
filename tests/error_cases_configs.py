"""Bad-input cases of the catalogue: config files, entry points and λ grids."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401
