"""Chunk integrity: every chunk file present, whole, and (format 2) equal to its checksum.

Zarr reads a missing chunk as fill values, and a damaged Blosc frame can crash the decoder, so
neither may reach a reader. Three checks, from cheap to thorough:

- **present**: every chunk an array's shape implies exists as a file. Format 2 stores every chunk,
  fill values included, so a missing one is damage. Format 1 writers could omit a chunk that held
  only zeros (Zarr's default), so there a missing chunk is damage only in the arrays of observations,
  states and continuous actions, where a whole chunk of zeros does not occur in recorded data; a
  missing reward, flag or index chunk reads as zeros, which the value checks then judge;
- **whole**: the Blosc header's compressed size equals the file's size (less the 4 checksum bytes in
  format 2), so a truncated or extended chunk is found by reading 16 bytes, before any decoding;
- **checksum** (format 2 only): the crc32c the writer appended to every chunk matches its bytes.

Opening a dataset runs the first two (milliseconds: one ``stat`` and 16 bytes per chunk);
validation runs all three. Format 1 has no checksums, so flipped bytes inside a chunk of the right
size cannot be found there: ``omgmg-data upgrade`` rewrites a store as format 2.

The same per-chunk checksums give a dataset's content fingerprint (:func:`content_sha256`), which
run directories record so that a run is never resumed on other data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import google_crc32c
import numpy as np

from omgmg.datakit.errors import Problem

BLOSC_HEADER_BYTES = 16
CHECKSUM_BYTES = 4
REGENERATE = "the store is damaged: restore it from a copy or regenerate it"


def store_root(group) -> Path | None:
    """The folder of a local store (None for stores that are not plain folders)."""
    root = getattr(group.store, "root", None)
    return Path(root) if root is not None else None


class _Files:
    """The chunk files of a store: a local folder, or a remote store's fsspec filesystem (read-only; every
    read there times out and is retried as :mod:`omgmg.datakit.remote` says)."""

    def __init__(self, group):
        from omgmg.datakit.remote import sync_filesystem

        self.root = store_root(group)
        fs = getattr(group.store, "fs", None)
        self.fs = None if fs is None else sync_filesystem(fs)
        self.base = str(getattr(group.store, "path", "")).rstrip("/")
        self.url = getattr(group.store, "url", None) or self.base

    @property
    def readable(self) -> bool:
        return self.root is not None or self.fs is not None

    def path(self, rel: str):
        return self.root / rel if self.root is not None else f"{self.base}/{rel}"

    def fetch(self, path, whole: bool) -> tuple[bytes | None, int | None]:
        """(the file's bytes: all of them if ``whole``, else at least its Blosc header; its size), or
        (None, None) when it is missing. A remote file is read whole, in one request: a missing one answers
        404, anything else (a 500, a timeout) is an error, never taken for a missing file."""
        if self.root is not None:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                return None, None
            with open(path, "rb") as f:
                return (f.read() if whole else f.read(BLOSC_HEADER_BYTES)), size
        from omgmg.datakit.remote import retrying

        rel = str(path)[len(self.base) :]
        try:
            data = retrying(f"{self.url}{rel}", lambda: self.fs.cat_file(path))
        except FileNotFoundError:
            return None, None
        return data, len(data)


def chunk_files(group, key: str) -> list[tuple[int, Path]]:
    """(chunk index along the leading axis, file) for every chunk the array's shape implies."""
    return _chunk_files(_Files(group), group[key])


def _chunk_files(files: _Files, arr) -> list[tuple[int, Path | str]]:
    n = int(arr.cdata_shape[0]) if arr.shape[0] else 0
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    zeros = (0,) * (arr.ndim - 1)
    return [(i, files.path(f"{arr.path}/{encode((i, *zeros))}")) for i in range(n)]


def check_chunks(group, keys: list[str], version: int, *, checksums: bool) -> list[Problem]:
    """Problems with the chunk files of the arrays ``keys`` (see the module docstring). On a remote
    store only ``checksums=True`` (validation) reads the chunk files: opening it checks no chunk."""
    files = _Files(group)
    if not files.readable or (files.root is None and not checksums):
        return []
    tail = CHECKSUM_BYTES if version >= 2 else 0
    problems = []
    for key in keys:
        arr = group[key]  # one metadata read per array, not per chunk
        rows, length = arr.chunks[0], arr.shape[0]
        may_be_absent = version < 2 and (key == "steps/reward" or arr.dtype.kind != "f")

        def problem(i: int, message: str, key=key, rows=rows, length=length) -> Problem:
            span = f"rows {i * rows}-{min(length, (i + 1) * rows) - 1}"
            return Problem(f"{key} chunk {i} ({span})", message, REGENERATE)

        for i, path in _chunk_files(files, arr):
            data, size = files.fetch(path, whole=bool(checksums and tail))
            if size is None:
                if not may_be_absent:
                    problems.append(problem(i, "chunk file is missing (it would read as zeros)"))
                continue
            if size < BLOSC_HEADER_BYTES + tail:
                problems.append(problem(i, f"chunk file is truncated ({size} bytes)"))
                continue
            frame = int.from_bytes(data[12:16], "little")
            if frame != size - tail:
                problems.append(
                    problem(
                        i, f"chunk file is {size} bytes but its header says {frame + tail}: truncated or overwritten"
                    )
                )
                continue
            if checksums and tail and _crc(data[:-tail]) != data[-tail:]:
                problems.append(
                    problem(i, "chunk checksum does not match its bytes (the data was altered after writing)")
                )
    return problems


def _crc(data: bytes) -> bytes:
    return np.uint32(google_crc32c.value(data)).tobytes()


def content_sha256(group, keys: list[str], version: int) -> str:
    """sha256 over every chunk's checksum (format 2: 4 bytes read per chunk) or bytes (format 1),
    with each array's shape: two stores with the same fingerprint hold the same data."""
    h = hashlib.sha256()
    files = _Files(group)
    for key in keys:
        arr = group[key]
        h.update(f"{key}:{tuple(arr.shape)}".encode())
        for i, path in _chunk_files(files, arr):
            if files.root is not None and version >= 2:  # 4 bytes read per chunk
                with open(path, "rb") as f:
                    f.seek(-CHECKSUM_BYTES, os.SEEK_END)
                    h.update(f.read())
                continue
            data, size = files.fetch(path, whole=True)
            if size is None:  # format 1: an all-zero chunk that was never written
                h.update(f"absent {i}".encode())
                continue
            h.update(data[-CHECKSUM_BYTES:] if version >= 2 else data)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's bytes (a dataset records its behaviour checkpoint's; publish and import, their files')."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
