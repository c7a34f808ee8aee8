"""``omgmg-data download``: copy a dataset from a URL to disk, atomically, checking it on arrival.

Every file of the store is copied into a folder beside the target (``.NAME.zarr.partial``), the copy is
validated in full (every chunk against its checksum, every value), and only then renamed into place;
on any failure the copy is removed and nothing is left at the target.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from omgmg.datakit.dataset import open_dataset, partial_path
from omgmg.datakit.errors import DatasetError, RequestError
from omgmg.datakit.hub import is_hub, pin
from omgmg.datakit.outputs import OutputLock, check_replaceable, is_omgmg_dataset, make_parent, os_errors
from omgmg.datakit.remote import filesystem, is_remote, retrying
from omgmg.datakit.validate import validate
from omgmg.datakit.writer import _replace_atomically


def download(url: str, out, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> Path:
    """Copy the dataset at ``url`` to ``out`` atomically, checking every chunk and value on arrival."""
    if not is_remote(url):
        raise RequestError(
            f"{url} is not a URL; give http(s)://, s3://, gs:// or hf:// (a local dataset needs no download)"
        )
    if is_hub(url):
        url = pin(url)
    out = Path(out)
    open_dataset(url)  # answers, is a dataset, has the structure of one: before anything is written
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        listed = retrying(f"{url} (listing its files)", lambda: fs.find(root))
    except FileNotFoundError:
        raise DatasetError(f"{url}: its files could not be listed (the server lists no folder there)") from None
    files = sorted(p for p in listed if not p.rstrip("/").endswith("/"))
    make_parent(out)
    aside = partial_path(out)
    with OutputLock(out, "download"), os_errors(out, "downloading to"):
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise RequestError(
                    f"{out} already exists; pass <<overwrite=True>> to replace it, or choose another path"
                )
            check_replaceable(out, owned=is_omgmg_dataset, what="an omgmg dataset")
        try:
            if aside.exists():
                shutil.rmtree(aside)
            for k, src in enumerate(files):
                rel = src[len(root) :].lstrip("/")
                target = aside / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    data = retrying(f"{url.rstrip('/')}/{rel}", lambda src=src: fs.cat_file(src))
                except FileNotFoundError:
                    raise DatasetError(
                        f"{url.rstrip('/')}/{rel} is missing, though the server lists it; the store there is "
                        "damaged: ask its publisher for an intact copy"
                    ) from None
                target.write_bytes(data)
                if progress:
                    progress(k + 1, len(files))
            problems = validate(aside)  # every chunk's checksum (format 2) and every value
            if problems:
                raise DatasetError(
                    f"{url} arrived damaged ({len(problems)} problem(s), first: {problems[0]}); "
                    f"nothing was kept at {out}"
                )
            _replace_atomically(aside, out, overwrite)
        finally:
            if aside.exists():
                shutil.rmtree(aside)
    return out
