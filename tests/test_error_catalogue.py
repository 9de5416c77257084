"""Every malformed input of the catalogue raises a clear error, exactly as docs/errors.md shows it."""

import pathlib

import pytest

import error_cases

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def test_catalogue_lists_at_least_thirty_inputs():
    assert len(error_cases.CASES) >= 30


@pytest.mark.parametrize("index", range(len(error_cases.CASES)), ids=[c[2].__name__ for c in error_cases.CASES])
def test_bad_input_gives_the_documented_error(index, tmp_path):
    area, what, fn = error_cases.CASES[index]
    message = error_cases.normalize(fn(tmp_path), tmp_path)
    assert "Traceback" not in message and len(message) > 20
    row = error_cases.markdown([(area, what, fn.__name__, message)]).splitlines()[-1]
    assert row in DOC.read_text(encoding="utf-8").splitlines(), f"docs/errors.md is stale for {fn.__name__}:\n{row}"
