"""Random-access sources over JSON-lines and plain-text files, for grain pipelines (``len``, ``[i]``).

One streaming pass builds a byte-offset index of the non-blank lines; records are read back
with ``os.pread`` on descriptors shared by grain's reader threads, so a file larger than
memory can still be shuffled, sharded and checkpointed. Remote files (``gs://``, through
``etils.epath``) are read back by ranged reads (seek + read) on one handle per file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from etils import epath

from peft_jax import fileio
from peft_jax.data.sources.errors import DataError, EmptySplitError, MissingDataError
from peft_jax.data.sources.reading import (XLSUM_FIELDS, ReadStats, check_policy, decode_line, parse_json_record,
                                           refuse_json_records)


class LineIndex:
    """Byte offsets of the non-blank lines of uncompressed files, built in one streaming pass.

    Only three int64 numbers per line are kept in memory; records are read back with
    ``os.pread`` so a source can be shared by reader threads without seeking.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], on_bad_utf8: str = "fail"):
        check_policy(on_bad_utf8)
        self.paths = [epath.Path(p) for p in paths]
        self.on_bad_utf8 = on_bad_utf8
        self.stats = ReadStats()
        columns = [self._index_file(i, p) for i, p in enumerate(self.paths)] or [(np.zeros(0, np.int64),) * 3]
        self.file_ids = np.concatenate([c[0] for c in columns])
        self.offsets = np.concatenate([c[1] for c in columns])
        self.line_numbers = np.concatenate([c[2] for c in columns])
        if len(self.offsets) == 0:
            raise EmptySplitError(f"no records in {', '.join(map(str, self.paths))} "
                                  f"({self.stats.skipped_bad_utf8} line(s) skipped as invalid UTF-8)")
        self._fds: dict[int, Any] = {}  # a descriptor (local) or an open file (remote)
        self._lock = threading.Lock()

    def _index_file(self, file_id: int, path: epath.Path) -> tuple[np.ndarray, ...]:
        """Scans one file; returns (file ids, byte offsets, line numbers) of its usable lines."""
        if path.suffix == ".gz":
            raise DataError(f"{path}: gzip files have no random access; stream them with text_lines() "
                            f"or convert them once with write_records()")
        if not path.is_file():
            raise MissingDataError(f"file {str(path)!r} not found")
        offsets, numbers, offset = [], [], 0
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                self.stats.lines += 1
                text = decode_line(raw, f"{path}:{line_no}", self.on_bad_utf8)
                if text is None:
                    self.stats.skipped_bad_utf8 += 1
                elif text.strip():
                    offsets.append(offset)
                    numbers.append(line_no)
                offset += len(raw)
        self.stats.records += len(offsets)
        return (np.full(len(offsets), file_id, np.int64), np.asarray(offsets, np.int64),
                np.asarray(numbers, np.int64))

    def __len__(self) -> int:
        return len(self.offsets)

    def _read_at(self, file_id: int, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` of a file opened on first use: reader threads share a local descriptor
        through pread, and a remote file's handle under the lock (its reads move one position)."""
        with self._lock:
            if file_id not in self._fds:
                path = self.paths[file_id]
                self._fds[file_id] = path.open("rb") if fileio.is_remote(path) else os.open(path, os.O_RDONLY)
            handle = self._fds[file_id]
            if not isinstance(handle, int):
                handle.seek(offset)
                return handle.read(size)
        return os.pread(handle, size, offset)

    def line(self, index: int) -> tuple[str, str]:
        """Returns ``(text, "file:line")`` of record ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        file_id, offset = int(self.file_ids[index]), int(self.offsets[index])
        chunk, parts = 1 << 16, []
        while True:  # read until the end of the line; lines may exceed one chunk
            data = self._read_at(file_id, chunk, offset)
            cut = data.find(b"\n")
            parts.append(data if cut < 0 else data[:cut])
            if cut >= 0 or len(data) < chunk:
                break
            offset += len(data)
        text = b"".join(parts).decode("utf-8").rstrip("\r")
        if int(self.line_numbers[index]) == 1:
            text = text.lstrip("\ufeff")
        return text, f"{self.paths[file_id]}:{int(self.line_numbers[index])}"

    def __getstate__(self):
        # File descriptors and locks do not survive pickling (grain worker processes).
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the files opened for reading."""
        with self._lock:
            for handle in self._fds.values():
                if isinstance(handle, int):
                    os.close(handle)
                else:
                    handle.close()
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass  # at interpreter exit modules may already be gone; the OS closes the files


class JsonLinesSource(LineIndex):
    """Random-access records of JSON-lines files (``len``, ``[i]``), for grain pipelines.

    Malformed lines raise ``MalformedRecordError`` naming file and line when they are read.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], fields: Sequence[str] | None = XLSUM_FIELDS,
                 on_bad_utf8: str = "fail", transform: Callable[[dict], Any] | None = None):
        super().__init__(paths, on_bad_utf8)
        self.fields = tuple(fields) if fields is not None else None
        self.transform = transform

    def __getitem__(self, index: int) -> Any:
        text, where = self.line(index)
        record = parse_json_record(text, where, self.fields)
        return self.transform(record) if self.transform else record


class TextLinesSource(LineIndex):
    """Random-access non-blank lines of plain-text files (``len``, ``[i]``).

    A file whose first lines are JSON records with a ``text`` field (mC4) is refused: read as plain
    text it would train on raw JSON.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], on_bad_utf8: str = "fail"):
        super().__init__(paths, on_bad_utf8)
        for path in self.paths:
            refuse_json_records(path, on_bad_utf8)

    def __getitem__(self, index: int) -> str:
        return self.line(index)[0]
