"""Datasets read straight from a URL (``http(s)://``, ``s3://``, ``gs://``), read-only, through zarr's fsspec
store, and copied to disk with :func:`download`.

Every reader of a local dataset reads a remote one the same way (``open_dataset``, the loader in
memory or streaming, ``inspect``, ``validate``, ``verify``, ``omgmg train --dataset``): the store is
opened with ``mode="r"``, so nothing is ever written there. Chunk checks read the chunk files through
the same filesystem (:mod:`omgmg.datakit.integrity`). HTTP needs ``aiohttp``, S3 ``s3fs``, Google
Cloud Storage ``gcsfs``: the extra ``omgmg[remote]`` brings them.

:func:`download` copies every file of the store into a folder beside the target, checks every chunk
against its checksum (format 2) and every value (full validation), and only then renames the copy
into place; on any failure the copy is removed and nothing is left at the target.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from omgmg.datakit.errors import BackendUnavailable, DatasetError, RequestError

SCHEMES = ("http://", "https://", "s3://", "gs://")
PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs"}
INSTALL = "pip install 'omgmg[remote]'"


def is_remote(location) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


class RemoteLocation(str):
    """A dataset's URL. Where omgmg names an output after its dataset, ``name`` is the URL's last part,
    and outputs that would go beside a local dataset (``parent``) go to the current folder."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def parent(self) -> Path:
        return Path.cwd()

    def absolute(self) -> RemoteLocation:
        return self


def filesystem(url: str):
    """(fsspec filesystem, path within it) for a URL; one line naming the missing package otherwise."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise BackendUnavailable(
            f"reading {scheme}:// locations needs {PACKAGES.get(scheme, 'an fsspec backend')} ({e}): {INSTALL}"
        ) from None


def sync_filesystem(fs):
    """A synchronous instance of a store's fsspec filesystem (zarr's is bound to zarr's own event loop)."""
    import fsspec

    if not getattr(fs, "async_impl", False):
        return fs
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fsspec.filesystem(protocol, **{**fs.storage_options, "asynchronous": False})


def open_group(url: str):
    """The dataset's zarr group at ``url``, read-only."""
    import zarr

    fs, root = filesystem(url)
    try:
        fs.cat_file(f"{root.rstrip('/')}/zarr.json")
    except FileNotFoundError:
        raise DatasetError(
            f"{url} is not an omgmg dataset: no zarr.json there (a dataset is a Zarr v3 store, NAME.zarr)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the network's errors come in many types
        raise DatasetError(f"{url} did not answer ({type(e).__name__}: {_first_line(e)})") from None
    try:
        return zarr.open_group(store=url, mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(
            f"{url} could not be opened as a Zarr v3 group ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def download(url: str, out, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> Path:
    """Copy the dataset at ``url`` to ``out`` atomically, checking every chunk and value on arrival."""
    from omgmg.datakit.dataset import open_dataset, partial_path
    from omgmg.datakit.outputs import OutputLock, check_replaceable, is_omgmg_dataset, make_parent, os_errors
    from omgmg.datakit.validate import validate
    from omgmg.datakit.writer import _replace_atomically

    if not is_remote(url):
        raise RequestError(f"{url} is not a URL; give http(s)://, s3:// or gs:// (a local dataset needs no download)")
    out = Path(out)
    open_dataset(url)  # answers, is a dataset, has the structure of one: before anything is written
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        files = sorted(p for p in fs.find(root) if not p.rstrip("/").endswith("/"))
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{url}: its files could not be listed ({type(e).__name__}: {_first_line(e)})") from None
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
                    data = fs.cat_file(src)
                except Exception as e:  # noqa: BLE001
                    raise DatasetError(
                        f"{url}: {rel} could not be read ({type(e).__name__}: {_first_line(e)})"
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
