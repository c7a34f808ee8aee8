"""Datasets read straight from a URL (``http(s)://``, ``s3://``, ``gs://``, ``hf://``), read-only, through zarr's
fsspec store, and copied to disk with :func:`download`.

Every reader of a local dataset reads a remote one the same way (``open_dataset``, the loader in
memory or streaming, ``inspect``, ``validate``, ``verify``, ``omgmg train --dataset``): the store is
opened with ``mode="r"``, so nothing is ever written there. Chunk checks read the chunk files through
the same filesystem (:mod:`omgmg.datakit.integrity`). HTTP needs ``aiohttp``, S3 ``s3fs``, Google
Cloud Storage ``gcsfs``, the Hugging Face hub ``huggingface_hub`` (:mod:`omgmg.datakit.hub`: a hub location
is pinned to a commit before it is read): the extra ``omgmg[remote]`` brings them.

Every read goes through :class:`CheckedStore`, so a remote store is read as safely as a local one:

- a chunk file that is missing is an error naming the URL and the chunk (Zarr would read it as fill
  values: zeros), and a chunk's checksum is checked before its values are used (the crc32c codec);
- connecting and every read have a timeout (``OMGMG_REMOTE_TIMEOUT`` seconds, default 30): a server that
  accepts a connection and never answers costs at most that, per try;
- transient failures (HTTP 5xx, a body cut short, a reset connection) are retried
  ``OMGMG_REMOTE_RETRIES`` times (default 3) with a doubling pause from 0.5 s, a timeout once (a silent
  server costs at most two timeouts); then, and for anything else (HTTP 403, ...), one line naming the
  URL, the object and the HTTP status or the timeout.

Copying a remote dataset to disk is :func:`omgmg.datakit.download.download`.
"""

from __future__ import annotations

from pathlib import Path

from omgmg.datakit.errors import BackendUnavailable, DatasetError

SCHEMES = ("http://", "https://", "s3://", "gs://", "hf://")
PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "hf": "huggingface_hub"}
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


DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
FIRST_PAUSE = 0.5


def timeout() -> float:
    """Seconds a connection or a read may take (``OMGMG_REMOTE_TIMEOUT``)."""
    return _env_number("OMGMG_REMOTE_TIMEOUT", DEFAULT_TIMEOUT, float)


def retries() -> int:
    """Further tries of a read that failed transiently (``OMGMG_REMOTE_RETRIES``)."""
    return _env_number("OMGMG_REMOTE_RETRIES", DEFAULT_RETRIES, int)


def _env_number(name: str, default, kind):
    import os

    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if not value >= 0:
        from omgmg.datakit.errors import ConfigError

        raise ConfigError(f"{name}={text!r} is not a non-negative number; unset it or give e.g. {default}")
    return value


def storage_options(url: str) -> dict:
    """The fsspec options that put the timeout on every connection and read of ``url``'s filesystem."""
    scheme = url.split("://", 1)[0]
    t = timeout()
    if scheme in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)}}
    if scheme == "s3":  # our retries, not botocore's too
        return {"config_kwargs": {"connect_timeout": t, "read_timeout": t, "retries": {"max_attempts": 1}}}
    if scheme == "gs":
        return {"timeout": t}
    return {}


def filesystem(url: str):
    """(fsspec filesystem, path within it) for a URL, with the timeouts of :func:`storage_options`; one line
    naming the missing package otherwise."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as e:
        raise BackendUnavailable(
            f"reading {scheme}:// locations needs {PACKAGES.get(scheme, 'an fsspec backend')} ({e}): {INSTALL}"
        ) from None


def describe(e: BaseException) -> tuple[str, bool]:
    """(what went wrong, in words, whether trying again may help) for an error of a remote read."""
    import asyncio

    status = getattr(e, "status", None) or getattr(e, "code", None)
    status = status or getattr(getattr(e, "response", None), "status_code", None)  # httpx (the hub's client)
    if isinstance(e, PermissionError) or status in (401, 403):
        return (
            f"access refused ({first_line(e)[:120]}): the credentials are wrong or may not read it "
            "(s3://: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE; hf://: HF_TOKEN)",
            False,
        )
    if isinstance(status, int) and 100 <= status < 600:
        message = getattr(e, "message", "") or ""
        return f"HTTP {status}{' ' + message if message else ''}", status >= 500 or status in (408, 429)
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {timeout():g} s (OMGMG_REMOTE_TIMEOUT)", True
    name = type(e).__name__
    if "Payload" in name:
        return "the answer was cut short before its end", True
    if "Connector" in name or isinstance(e, ConnectionRefusedError):
        return f"the server did not answer ({first_line(e)[:160]})", True
    transient = any(word in name for word in ("Disconnected", "Connection", "Timeout", "Reset"))
    return f"{name}: {first_line(e)[:200]}", transient


class _Tries:
    """One read's retry budget: ``retries()`` more tries after transient failures, a timeout retried once."""

    def __init__(self, what: str):
        self.what, self.attempt, self.timeouts, self.pause = what, 0, 0, FIRST_PAUSE

    def failed(self, e: Exception) -> float:
        """The pause before the next try; a DatasetError of one line when there is none."""
        problem, transient = describe(e)
        self.timeouts += problem.startswith("no answer within")
        if not transient or self.attempt >= retries() or self.timeouts > 1:
            tries = f" after {self.attempt + 1} tries" if self.attempt else ""
            raise DatasetError(f"{self.what} could not be read{tries}: {problem}") from None
        self.attempt += 1
        pause, self.pause = self.pause, self.pause * 2
        return pause


def retrying(what: str, call):
    """Run ``call()`` (a read of ``what``: the URL and the object), retried with a doubling pause on transient
    failures; anything else, or the last failure, is a DatasetError of one line."""
    import time

    tries = _Tries(what)
    while True:
        try:
            return call()
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - the network's errors come in many types
            time.sleep(tries.failed(e))


def is_chunk_key(key: str) -> bool:
    """A chunk's key in a Zarr v3 store ("steps/obs/c/0/0/0"), as opposed to metadata ("zarr.json")."""
    return "/c/" in f"/{key}" and not key.endswith("zarr.json")


def sync_filesystem(fs):
    """A synchronous instance of a store's fsspec filesystem (zarr's is bound to zarr's own event loop)."""
    import fsspec

    if not getattr(fs, "async_impl", False):
        return fs
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fsspec.filesystem(protocol, **{**fs.storage_options, "asynchronous": False})


def open_group(url: str):
    """The dataset's zarr group at ``url``, read-only, every read through a :class:`CheckedStore`."""
    import zarr
    from zarr.storage import FsspecStore

    if url.startswith("hf://"):
        from omgmg.datakit.hub import pin

        url = pin(url)  # a wrong repository or revision is one line here, before any file is asked for
    fs, root = filesystem(url)
    try:
        retrying(f"{url.rstrip('/')}/zarr.json", lambda: fs.cat_file(f"{root.rstrip('/')}/zarr.json"))
    except FileNotFoundError:
        raise DatasetError(
            f"{url} is not an omgmg dataset: no zarr.json there (a dataset is a Zarr v3 store, NAME.zarr)"
        ) from None
    try:
        store = CheckedStore(FsspecStore.from_url(url, storage_options=storage_options(url), read_only=True), url)
        return zarr.open_group(store=store, mode="r", zarr_format=3)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DatasetError(
            f"{url} could not be opened as a Zarr v3 group ({type(e).__name__}: {first_line(e)})"
        ) from None


def _checked_store_class():
    """:class:`CheckedStore`, made on first use (zarr is imported lazily)."""
    from zarr.storage import WrapperStore

    class CheckedStore(WrapperStore):
        """A remote store read as safely as a local one (see the module docstring): a missing chunk is an
        error, never fill values; reads time out, transient failures are retried, the rest is one line."""

        def __init__(self, store, url: str):
            super().__init__(store)
            self.url = url.rstrip("/")

        def _with_store(self, store):
            return type(self)(store, self.url)

        @property
        def fs(self):  # what omgmg.datakit.integrity reads the chunk files through
            return self._store.fs

        @property
        def path(self):
            return self._store.path

        async def get(self, key, prototype, byte_range=None):
            import asyncio

            what = f"{self.url}/{key}"
            tries = _Tries(what)
            while True:
                try:
                    value = await self._store.get(key, prototype, byte_range)
                    break
                except Exception as e:  # noqa: BLE001 - the network's errors come in many types
                    await asyncio.sleep(tries.failed(e))
            if value is None and is_chunk_key(key):
                raise DatasetError(
                    f"{what} is missing: a chunk of {key.split('/c/')[0]} (it would read as zeros); the store "
                    "there is damaged: ask its publisher for an intact copy"
                )
            return value

    return CheckedStore


def CheckedStore(store, url: str):  # noqa: N802 - a class, made lazily
    return _checked_store_class()(store, url)


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
