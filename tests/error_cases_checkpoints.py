"""Bad-input cases of the catalogue: checkpoint formats and configs."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401
