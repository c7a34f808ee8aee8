"""A sweep whose results and run directories live at a URL (``omgmg sweep SPEC --out s3://bucket/sweeps/NAME``),
so the machines of a cluster need share nothing but that store.

- The driver keeps a local copy of the sweep (``$OMGMG_HOME/sweeps/<url>``: ``sweep.json``, every cell's
  ``cell.json`` and ``result.json``); at its start it fetches the results already in the store, so cells
  finished anywhere are not trained again, and at its end it puts the report there.
- A job trains its cells in a folder of its own machine (``$OMGMG_HOME/cells/<url>``). Before it starts,
  a cell whose run is in the store and not here is fetched, so a cell whose machine was lost resumes from
  its last checkpoint on another. While it trains, each new checkpoint is put in the store with the log
  and config it belongs to (checkpoint first: a log may run ahead of its checkpoint, and resuming cuts it
  back). When it ends, its files are put there, ``result.json`` last: a cell is finished in the store only
  once everything it wrote is there.
- One machine trains a cell at a time: a job takes the cell's lease in the store first (:class:`Lease`) and
  renews it while it trains. A retry on another machine, after its first machine was lost, waits for
  the lost machine's lease to run out (``LEASE_SECONDS``) and resumes; a cell another machine is training
  is left to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

from omgmg.datakit.outputs import atomic_write_bytes, data_home
from omgmg.datakit.remote import filesystem, is_remote, retrying

MIRROR_EVERY = 2.0
"""Seconds between looks for a new checkpoint to put in the store."""

RUN_FILES = ("checkpoints/latest.pt", "checkpoints/latest.previous.pt", "config.json", "log.jsonl")
"""What a checkpoint's upload carries, in this order."""


def is_store(out) -> bool:
    return is_remote(str(out))


def _slug(url: str) -> str:
    url = url.rstrip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-80:] + "-" + hashlib.sha1(url.encode()).hexdigest()[:8]


def staging(url: str) -> Path:
    """The driver's local copy of the sweep at ``url``."""
    return data_home() / "sweeps" / _slug(url)


def node_dir(cell_url: str) -> Path:
    """Where this machine trains the cell whose store folder is ``cell_url``."""
    return data_home() / "cells" / _slug(cell_url)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _fs(url: str):
    fs, root = filesystem(url)
    return fs, root.rstrip("/")


def _get(url: str, rel: str) -> bytes | None:
    fs, root = _fs(url)
    try:
        return retrying(f"{url}/{rel}", lambda: fs.cat_file(f"{root}/{rel}"))
    except FileNotFoundError:
        return None


def put(url: str, rel: str, data: bytes) -> None:
    fs, root = _fs(url)
    retrying(f"{url}/{rel} (writing it)", lambda: fs.pipe_file(f"{root}/{rel}", data))


def pull_results(url: str, local: Path) -> int:
    """Fetch every cell's ``cell.json`` and ``result.json`` from the store into ``local``; how many results."""
    fs, root = _fs(url)
    try:
        found = retrying(f"{url} (listing its results)", lambda: fs.glob(f"{root}/cells/*/result.json"))
    except FileNotFoundError:
        return 0
    for path in found:
        cell = path[len(root) :].strip("/").rsplit("/", 1)[0]  # cells/NAME
        for name in ("cell.json", "result.json"):
            data = _get(url, f"{cell}/{name}")
            if data is not None:
                _write(local / cell / name, data)
    return len(found)


def pull_run(cell_url: str, local: Path) -> bool:
    """Fetch the cell's run from the store where this machine has no checkpoint of it; whether it did."""
    if (local / "run" / "checkpoints" / "latest.pt").exists():
        return False
    latest = _get(cell_url, "run/checkpoints/latest.pt")
    if latest is None:
        return False
    for rel in RUN_FILES[1:]:
        data = _get(cell_url, f"run/{rel}")
        if data is not None:
            _write(local / "run" / rel, data)
    _write(local / "run" / "checkpoints" / "latest.pt", latest)  # last: the run is whole
    return True


def push_run(cell_url: str, local: Path) -> None:
    """Put the cell's current checkpoint, config and log in the store (the checkpoint first)."""
    for rel in RUN_FILES:
        path = local / "run" / rel
        if path.exists():
            put(cell_url, f"run/{rel}", path.read_bytes())


def push_cell(cell_url: str, local: Path) -> None:
    """Put a finished cell in the store: its run, its ``cell.json``, and ``result.json`` last."""
    push_run(cell_url, local)
    for name in ("cell.json", "result.json"):
        if (local / name).exists():
            put(cell_url, name, (local / name).read_bytes())


class CheckpointMirror:
    """While cells train (a context manager), put each new checkpoint of theirs in the store."""

    def __init__(self, pairs: list[tuple[str, Path]], every: float | None = None, leases: list | None = None):
        self.pairs, self.every = pairs, MIRROR_EVERY if every is None else every
        self.leases, self.renewed = leases or [], time.monotonic()
        self.seen: dict[Path, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="checkpoint-mirror")

    def _sync(self) -> None:
        for cell_url, local in self.pairs:
            latest = local / "run" / "checkpoints" / "latest.pt"
            try:
                stamp = latest.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.seen.get(latest) != stamp:
                push_run(cell_url, local)
                self.seen[latest] = stamp

    def _watch(self) -> None:
        quarter = lease_seconds() / 4
        while not self.stop.wait(min(self.every, quarter)):
            try:
                if time.monotonic() - self.renewed >= quarter:
                    for lease in self.leases:
                        lease.renew()
                    self.renewed = time.monotonic()
                self._sync()
            except Exception:  # noqa: BLE001 - a failed upload is tried again at the next checkpoint or the end
                pass

    def __enter__(self) -> CheckpointMirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


LEASE_SECONDS = 60.0
"""How long a cell's lease holds without renewal: the cost of a lost machine before its cells move on."""


def lease_seconds() -> float:
    """``LEASE_SECONDS``, or ``$OMGMG_LEASE_SECONDS`` where a cluster sets it to lose less time to a lost machine
    (set it alike on every node: the holder's setting decides when its lease ends, another machine's how long
    it waits for one). At least 2 s: a lease is renewed every quarter of it, and a renewal is a request."""
    raw = os.environ.get("OMGMG_LEASE_SECONDS")
    if raw is None:
        return LEASE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 2 or seconds == float("inf"):
        raise ValueError(f"OMGMG_LEASE_SECONDS={raw!r} is not a number of seconds of at least 2; unset it for "
                         f"the default {LEASE_SECONDS:g}")  # fmt: skip
    return seconds


class Lease:
    """A cell held by one machine at a time, across machines that share only the store: ``lease.json`` in the
    cell's store folder names its holder and when the hold ends. The holder renews it (the checkpoint mirror
    does, every quarter of :func:`lease_seconds`); another machine waits for it to end, or gives the cell up after
    ``wait`` seconds. Two machines taking a free lease at once both write it, wait a moment and read it back:
    only the one whose write is there keeps it (the store's last write wins, and reads after it see it)."""

    SETTLE = 1.0

    def __init__(self, cell_url: str):
        import os
        import socket
        import uuid

        self.url = cell_url
        self.me = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}

    def _read(self) -> dict | None:
        data = _get(self.url, "lease.json")
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def _write(self) -> None:
        put(self.url, "lease.json", json.dumps({**self.me, "until": time.time() + lease_seconds()}).encode())

    def acquire(self, wait: float) -> str | None:
        """Take the lease; None when taken, else who holds it (after waiting up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            held = self._read()
            if held is None or held.get("until", 0) < time.time() or held.get("holder") == self.me["holder"]:
                self._write()
                time.sleep(self.SETTLE)
                held = self._read()
                if held and held.get("holder") == self.me["holder"]:
                    return None
            if time.monotonic() >= deadline:
                return f"{held.get('host')} (pid {held.get('pid')})" if held else "another machine"
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def renew(self) -> None:
        self._write()

    def release(self) -> None:
        fs, root = _fs(self.url)
        held = self._read()
        if held and held.get("holder") == self.me["holder"]:
            try:
                fs.rm_file(f"{root}/lease.json")
            except FileNotFoundError:
                pass
