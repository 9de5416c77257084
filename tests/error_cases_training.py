"""Bad-input cases of the catalogue: training config values, workdirs and resume."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401
