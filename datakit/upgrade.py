"""Rewriting a dataset of an older format as the current one (``omgmg-data upgrade OLD --out NEW``).

Format 1 or 2 -> 3: the same arrays, chunk shapes and metadata, every chunk re-encoded with the crc32c
checksum codec (format 2 added it; format 3 added only optional arrays, which an older store does not
hold: its data never recorded what the behaviour policy did); ``identity_sha256`` is recomputed for
the new version and ``collection.upgraded_from`` records the source's format version and content
fingerprint. The source is validated fully first
(a damaged store is refused, never carried into a checksummed one), the new store is written aside
and renamed into place after it validated, and the source is never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omgmg.datakit import format as fmt
from omgmg.datakit.dataset import Dataset, open_dataset, partial_path
from omgmg.datakit.errors import InvalidDatasetError, RequestError
from omgmg.datakit.outputs import (
    OutputLock,
    check_replaceable,
    is_omgmg_dataset,
    make_parent,
    os_errors,
    read_lock,
    remove_output,
)
from omgmg.datakit.remote import RemoteLocation, is_remote
from omgmg.datakit.validate import validate
from omgmg.datakit.writer import _replace_atomically


def upgrade(src, out, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Write the dataset at ``src`` in the current format to ``out``; see the module docstring."""
    import zarr

    src = RemoteLocation(src) if is_remote(str(src)) else Path(src)  # a URL stays a URL (read-only)
    out = Path(out)
    old = open_dataset(src)
    sources = () if is_remote(src) else (src,)
    if old.format_version == fmt.FORMAT_VERSION:
        raise RequestError(f"{src} is already format {fmt.FORMAT_VERSION}; nothing to upgrade")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise RequestError(f"{out} already exists; choose another path or pass <<overwrite=True>>")
        check_replaceable(out, owned=is_omgmg_dataset, what="an omgmg dataset", sources=sources)
    problems = validate(src)
    if problems:
        raise InvalidDatasetError(src, problems)
    make_parent(out)
    partial = partial_path(out)
    layout = old.layout
    total = sum(int(old.group[a.key].shape[0]) for a in layout)
    with OutputLock(out, "dataset"), read_lock(src), os_errors(out, "upgrading into"):
        if partial.exists():
            check_replaceable(partial, owned=is_omgmg_dataset, what="an unfinished omgmg write")
            remove_output(partial)
        new = zarr.open_group(store=str(partial), mode="w", zarr_format=3)
        new.attrs[fmt.WRITER_ATTR] = {"upgrading_from": str(src)}  # marks the store as an unfinished write
        done = 0
        for a in layout:
            arr = old.group[a.key]
            dst = (
                new.require_group(a.group)
                .create_array(
                    a.name,
                    shape=arr.shape,
                    chunks=arr.chunks,
                    dtype=a.dtype,
                    compressors=fmt.compressors(a.dtype),
                    fill_value=0,
                )
                .with_config({"write_empty_chunks": True})
            )  # every chunk stored (format 2 on)
            rows = arr.chunks[0] * 8
            for lo in range(0, arr.shape[0], rows):
                hi = min(arr.shape[0], lo + rows)
                dst[lo:hi] = old.read(a.key, lo, hi)
                done += hi - lo
                if progress:
                    progress(done, total)
        meta = dict(old.meta)
        meta["format_version"] = fmt.FORMAT_VERSION
        meta["identity_sha256"] = fmt.identity_sha256(old.spec, fmt.FORMAT_VERSION)
        meta["collection"] = {
            **meta["collection"],
            "upgraded_from": {
                "format_version": old.format_version,
                "content_sha256": old.content_sha256(),
                "omgmg_version": meta.get("omgmg_version"),
            },
        }
        meta["omgmg_version"] = fmt.package_version()
        new.attrs.put(meta)
        problems = validate(partial)
        if problems:
            raise InvalidDatasetError(partial, problems)
        _replace_atomically(partial, out, overwrite, sources=sources)  # the writer's own move into place
    return open_dataset(out)
