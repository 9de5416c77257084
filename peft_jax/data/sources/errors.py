"""The data package's errors: each names the file, the line or the layout that was expected."""

from __future__ import annotations


class DataError(ValueError):
    """Base class of the data package's errors about bad or missing input."""


class MissingDataError(DataError, FileNotFoundError):
    """A file, directory or prepared dataset is missing; the message states the expected layout."""


class MalformedRecordError(DataError):
    """A line that is not the expected JSON object (the message names file and line)."""


class MissingFieldError(MalformedRecordError):
    """A record without a required field (the message names file, line and field)."""


class EmptySplitError(DataError):
    """A split or file that holds no examples."""


class BadEncodingError(DataError):
    """Text that is not valid UTF-8 while ``on_bad_utf8="fail"``."""


class MissingDependencyError(DataError, ImportError):
    """An optional package (``datasets``, ``tensorflow_datasets``) is needed but not installed."""
