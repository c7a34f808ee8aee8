"""Writing outputs safely: one writer per output, replacing only what omgmg wrote, whole files or
nothing, and one clear line when the machine is in the way.

Every command that writes (datasets, exports, run directories, sweep cells, behaviour runs) uses
these pieces:

- :class:`OutputLock`: an exclusive ``fcntl.flock`` on ``.NAME.lock`` beside the output. The OS
  releases it when the process dies, however it dies, so a killed writer never blocks the next one;
  a second writer is refused at once with a line naming the holder.
- :func:`check_replaceable`: what ``--force`` may delete. Only an output omgmg wrote (a store whose
  metadata says it is an omgmg dataset, a run directory with omgmg's config, a file omgmg
  exported), never a symbolic link, never the working directory or a folder holding it, never the
  source of the command.
- :func:`atomic_write_bytes` / :func:`atomic_write_text`: a temporary file beside the target,
  fsync, rename, fsync of the folder: a reader sees the old file or the new one, never half of one.
- :func:`os_errors`: turns the operating system's refusals (no space, permission, read-only file
  system, a file where a folder should be) into an :class:`OutputError` naming the path and what
  was being done.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from omgmg.datakit.errors import OutputError, RequestError

# ----- the operating system's refusals ----------------------------------------------------------------


def data_home() -> Path:
    """Where omgmg keeps behaviour runs and generated datasets: ``$OMGMG_HOME``, default ``~/.omgmg``."""
    return Path(os.environ.get("OMGMG_HOME", Path.home() / ".omgmg")).expanduser()


HOME_PREFIX = "$OMGMG_HOME"


def home_relative(path) -> str:
    """How metadata names a path: ``$OMGMG_HOME/...`` for one inside the home folder (true on any machine
    with its own home), else the absolute path."""
    path = Path(os.path.abspath(path))
    home = Path(os.path.abspath(data_home()))
    try:
        return f"{HOME_PREFIX}/{path.relative_to(home).as_posix()}"
    except ValueError:
        return str(path)


def from_home_relative(text: str) -> Path:
    """The path :func:`home_relative` wrote, on this machine."""
    if text == HOME_PREFIX or text.startswith(HOME_PREFIX + "/"):
        return data_home() / text[len(HOME_PREFIX) + 1 :]
    return Path(text)


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_room(folder, need: int, target) -> None:
    """Refuse (one line) to write ``need`` bytes for ``target`` into ``folder`` when the folder is on a
    read-only file system, not writable, or its device has less free space than that."""
    folder = Path(folder)
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        raise OutputError(f"{folder} is on a read-only file system: write {Path(target).name} somewhere else")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"permission denied: {folder} is not writable; choose a folder you can write to")
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(
            f"writing {target} needs about {human_bytes(need)}; its device has {human_bytes(free)} free: free "
            "some space or write somewhere else"
        )


def output_error(e: OSError, path, doing: str) -> OutputError:
    """One line for an OSError met while ``doing`` something to ``path``."""
    path = Path(path)
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = human_bytes(shutil.disk_usage(_existing_ancestor(path)).free)
        except OSError:
            free = "unknown"
        return OutputError(
            f"no space left on the device of {path} while {doing} ({free} free); "
            "free some space or write somewhere else"
        )
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"permission denied while {doing} {path}; choose a folder you can write to")
    if code == errno.EROFS:
        return OutputError(f"{path} is on a read-only file system (while {doing}); write somewhere else")
    if code == errno.ENOTDIR or (code == errno.EEXIST and not path.is_dir()):
        return OutputError(f"cannot use {path} while {doing}: a part of that path is a file, not a folder")
    if code == errno.ENOENT:
        return OutputError(f"cannot use {path} while {doing}: its folder does not exist")
    if code == errno.EISDIR:
        return OutputError(f"{path} is a folder, but a file is needed while {doing}")
    return OutputError(f"{doing} {path} failed: {e.strerror or e}")


@contextmanager
def os_errors(path, doing: str) -> Iterator[None]:
    """Re-raise any OSError inside the block as an :class:`OutputError` about ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise output_error(e, path, doing) from None


def make_parent(path) -> None:
    """Create the folder that will hold ``path`` (and its parents), or say in one line why not."""
    parent = Path(path).parent
    with os_errors(parent, "creating the folder"):
        parent.mkdir(parents=True, exist_ok=True)


# ----- whole files or nothing --------------------------------------------------------------------------


def fsync_dir(folder) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os_errors(path, "writing"):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ----- one writer per output ---------------------------------------------------------------------------


def lock_path(target) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


class OutputLock:
    """Exclusive lock on an output (see the module docstring); a context manager, or ``acquire`` /
    ``release``. ``what`` names the output in messages ("dataset", "run directory", ...)."""

    def __init__(self, target, what: str = "output"):
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self

        def busy(holder: str) -> OutputError:
            return OutputError(
                f"the {self.what} {self.target} is in use by another omgmg process ({holder}); "
                "wait for it to finish, or stop it and run this again"
            )

        with os_errors(self.path.parent, f"locking the {self.what} {self.target.name} in"):
            fd = _flock_current(self.path, fcntl.LOCK_EX, busy)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError:
            pass  # the lock holds without the note (e.g. disk full); only the busy message is poorer
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: see the inode check in acquire
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def _flock_current(path: Path, how: int, busy) -> int:
    """Open the lock file ``path`` and ``flock`` it (``how``: LOCK_EX or LOCK_SH, never waiting): its fd, or
    ``busy(holder)`` raised where another process holds it. A holder that let go meanwhile unlinked the file
    we locked (see ``release``): then the current file is locked instead."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise busy(holder) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:  # shared holders write no note: readers such as a training on this dataset
        return "read by a running omgmg command, e.g. a training on it"
    return f"pid {info.get('pid')} on {info.get('host')}, `{info.get('command')}`, since {info.get('since')}"


class ReadLock:
    """A shared lock on a dataset that a long command reads (a training, an export): while any reader holds
    it, a command that would replace or rewrite the dataset (``--force``, ``download --force``) is refused by
    its :class:`OutputLock`, and a reader is refused while a writer holds that. A context manager."""

    def __init__(self, target, what: str = "dataset"):
        self.target, self.what = Path(target), what
        self.path = lock_path(self.target)
        self._fd: int | None = None

    def __enter__(self) -> ReadLock:
        def busy(holder: str) -> OutputError:
            return OutputError(
                f"the {self.what} {self.target} is being written by another omgmg process ({holder}); wait for "
                "it to finish, then run this again"
            )

        try:
            self._fd = _flock_current(self.path, fcntl.LOCK_SH, busy)
        except OutputError:
            raise
        except OSError:  # a read-only folder: nothing can replace the dataset from here either
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:  # the last reader out removes the file (others that hold it keep it; see OutputLock.acquire)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def read_lock(location):
    """:class:`ReadLock` on a local dataset; nothing for a URL (omgmg never writes there)."""
    from contextlib import nullcontext

    from omgmg.datakit.remote import is_remote

    return nullcontext() if is_remote(str(location)) else ReadLock(location)


# ----- what --force may replace --------------------------------------------------------------------------


def _zarr_attributes(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else None


def is_omgmg_dataset(path) -> bool:
    """A Zarr store whose metadata marks it as an omgmg dataset (finished or unfinished)."""
    attrs = _zarr_attributes(Path(path)) if Path(path).is_dir() else None
    if attrs is None:
        return False
    return ("format_version" in attrs and "identity_sha256" in attrs) or "_writer" in attrs


def is_omgmg_run(path) -> bool:
    """A run directory omgmg's trainer wrote: ``config.json`` naming an algorithm and a dataset."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return path.is_dir() and isinstance(config, dict) and "algorithm" in config and "config" in config


def is_omgmg_export(path) -> bool:
    """An HDF5 file omgmg exported (its root attribute ``exported_by`` is ``omgmg``)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("exported_by") in ("omgmg", b"omgmg")
    except OSError:
        return False


def check_replaceable(path, *, owned: Callable[[Path], bool], what: str, sources: Iterable = ()) -> None:
    """Refuse (one line) to replace ``path`` unless ``owned(path)`` says it is ``what`` (e.g. "an omgmg
    dataset"), i.e. something omgmg wrote.

    Never a symbolic link, never the working directory or a folder that holds it, never one of
    ``sources`` or a folder holding one, never a folder inside one of them.
    """
    path = Path(path)
    if path.is_symlink():
        raise RequestError(
            f"{path} is a symbolic link; omgmg does not replace links: remove it yourself or choose another output path"
        )
    if not path.exists():
        return
    real = path.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise RequestError(f"refusing to replace {path}: it is (or holds) the current directory")
    for src in sources:
        s = Path(src).resolve()
        if real == s or real in s.parents or s in real.parents:
            raise RequestError(f"refusing to replace {path}: it is (or holds, or lies inside) the source {src}")
    if not owned(path):
        kind = "folder" if path.is_dir() else "file"
        raise RequestError(
            f"refusing to replace {path}: this {kind} is not {what}; remove it yourself or choose another output path"
        )


def remove_output(path) -> None:
    """Delete an output that :func:`check_replaceable` accepted."""
    path = Path(path)
    with os_errors(path, "removing"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ----- step-indexed JSONL logs ---------------------------------------------------------------------------


def append_jsonl(path, record: dict) -> None:
    """Append one record as one line (a crash or a full disk can tear only the last line)."""
    with os_errors(path, "appending to the log"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path, *, warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every record of a JSONL log. A torn last line (no newline, not JSON: a write cut by a crash or a
    full disk) is skipped with a warning; a damaged line elsewhere is an error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    with os_errors(path, "reading the log"):
        text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if n == len(lines):  # the last line, without its newline: torn
                if warn:
                    warn(f"{path}: dropped a torn last line (a write cut short by a crash or a full disk)")
                continue
            raise OutputError(
                f"{path} line {n} is not JSON: the log was edited or damaged; repair or remove that line"
            ) from None
    return records


def truncate_jsonl(path, keep: Callable[[dict], bool], *, warn: Callable[[str], None] | None = None) -> None:
    """Rewrite a log (atomically) with only the records ``keep`` accepts, e.g. those at or before the step
    of the checkpoint a run resumes from; a torn last line goes too."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path, warn=warn) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
