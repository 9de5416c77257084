"""Shared test fixtures: the in-repo test data (located by `testdata`) and offline Hugging Face settings."""

import os
import pathlib

import pytest

import testdata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def test_data() -> pathlib.Path:
    """The root of `tests/data/`; a missing folder fails the test."""
    return testdata.path()
