"""Bad-input cases of the catalogue: token ids, decoding and text inputs."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401
