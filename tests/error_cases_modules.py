"""Bad-input cases of the catalogue: modules that do not fit their base, PEFT config values."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401
