"""The one place that locates the real data the tests read: `tests/data/` (sources and licences in its README).

The data ships with the repository, so a plain clone runs every test. A missing file is a test
failure that names the file, never a skip: a skipped real-data test proves nothing.
"""

from __future__ import annotations

import pathlib

import pytest

DATA = pathlib.Path(__file__).resolve().parent / "data"


def path(*parts: str) -> pathlib.Path:
    """`tests/data/<parts...>`, failing the calling test if it is missing."""
    found = DATA.joinpath(*parts)
    if not found.exists():
        pytest.fail(f"test data missing: {found} (tests/data/README.md lists every file and where it comes from)",
                    pytrace=False)
    return found
