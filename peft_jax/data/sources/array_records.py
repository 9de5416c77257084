"""ArrayRecord files of JSON records: write any stream once, then read it with random access."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import grain

from peft_jax.data.sources.errors import EmptySplitError
from peft_jax.data.sources.reading import expand_paths


def write_records(records: Iterable[Any], path: str | os.PathLike) -> int:
    """Writes JSON-serialisable records to an ArrayRecord file; returns how many.

    Any stream (gzip files, TFDS, the hub) can be written once this way and then read
    with random access by ``RecordFileSource`` without holding it in memory.
    """
    # A compiled extension that only writing needs; reading goes through grain.
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
    writer = ArrayRecordWriter(str(path), "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    if count == 0:
        raise EmptySplitError(f"no records to write to {path}")
    return count


class RecordFileSource:
    """Random access to the JSON records of ArrayRecord files written by ``write_records``."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        files = expand_paths(paths)
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in files])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        return json.loads(self._source[index].decode("utf-8"))
