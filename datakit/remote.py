"""Datasets read straight from a URL (``http(s)://``, ``s3://``, ``gs://``), read-only, through zarr's fsspec
store, and copied to disk with :func:`download`.

Every reader of a local dataset reads a remote one the same way (``open_dataset``, the loader in
memory or streaming, ``inspect``, ``validate``, ``verify``, ``omgmg train --dataset``): the store is
opened with ``mode="r"``, so nothing is ever written there. Chunk checks read the chunk files through
the same filesystem (:mod:`omgmg.datakit.integrity`). HTTP needs ``aiohttp``, S3 ``s3fs``, Google
Cloud Storage ``gcsfs``: the extra ``omgmg[remote]`` brings them.

Copying a remote dataset to disk is :func:`omgmg.datakit.download.download`.
"""

from __future__ import annotations

from pathlib import Path

from omgmg.datakit.errors import BackendUnavailable, DatasetError

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
        raise DatasetError(f"{url} did not answer ({type(e).__name__}: {first_line(e)})") from None
    try:
        return zarr.open_group(store=url, mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(
            f"{url} could not be opened as a Zarr v3 group ({type(e).__name__}: {first_line(e)})"
        ) from None


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
