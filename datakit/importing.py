"""Importing another format's dataset: what every source format tells (:class:`Imported`) and the one
tail that writes it (:func:`write_imported`).

An importer holds only knowledge of its format (:mod:`omgmg.datakit.omiga`, :mod:`omgmg.datakit.ogmarl`).
It reads and checks the source and says

- what task the data is from (an :class:`~omgmg.datakit.spec.EnvSpec`) and at what level;
- what it had to assume and where the data came from: the dataset's ``collection`` metadata (how rows
  make episodes, terminations vs truncations, the provenance with what the source cannot tell);
- the episodes, one at a time, as the arguments of :meth:`DatasetWriter.add_episode`.

:func:`write_imported` does the rest, the same for every format: the episodes are written aside,
validated and renamed into place; any failure, the source's included, throws the partial write away
(an import is re-run from its source, never resumed) and leaves whatever was at the output untouched.

    imported = Imported(spec, "medium", collection, source=path, source_rows=T, episodes=read_episodes())
    write_imported(imported, "hopper-medium.zarr")

A source need not be on this disk: :func:`fetched` gives every importer a local path for a URL (``hf://``
through the hub's cache, pinned to a commit; ``http(s)://``, ``s3://``, ``gs://`` into a folder beside the
output) and unpacks a ``.zip`` (a published vault) there, and the dataset's ``collection.origin`` records
where it came from: the pinned location and the sha256 of what was fetched.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import DatasetError, RequestError
from omgmg.datakit.hub import fetch_file, is_hub, pin
from omgmg.datakit.integrity import file_sha256
from omgmg.datakit.outputs import os_errors
from omgmg.datakit.provenance import layouts, package_versions
from omgmg.datakit.remote import filesystem, is_remote, retrying
from omgmg.datakit.spec import EnvSpec
from omgmg.datakit.writer import DatasetWriter

NOT_RECORDED = (
    "the simulator and package versions the data was recorded with",
    "how the environment was built",
    "each episode's reset seed (the data cannot be replayed)",
    "the behaviour policy",
)
"""What no foreign source records, for the provenance's ``unknown`` list."""


@dataclass
class Imported:
    """One source, read and checked: everything the shared tail needs to write it as an omgmg dataset."""

    spec: EnvSpec
    level: str
    collection: dict
    """The dataset's ``collection`` metadata: the source, every assumption the importer made, the provenance."""
    source: Path
    """The file or folder imported (its outputs are checked not to overlap it)."""
    source_rows: int
    """How many rows the source holds, for progress."""
    episodes: Iterable[tuple[dict, int]]
    """Each episode's :meth:`DatasetWriter.add_episode` arguments, with how many source rows were read by then."""
    behaviour_arrays: tuple[str, ...] = ()
    """The format-3 behaviour arrays the episodes carry (only an omgmg export keeps them)."""


def write_imported(
    imported: Imported,
    out,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    origin: dict | None = None,
) -> Dataset:
    """Write an imported source's episodes as the dataset ``out``, atomically; see the module docstring.
    ``origin``: where a fetched source came from (:func:`fetched`), kept as ``collection.origin``."""
    writer = DatasetWriter(
        out,
        imported.spec,
        level=imported.level,
        behaviour_policy=None,
        collection={**imported.collection, **({"origin": origin} if origin else {})},
        overwrite=overwrite,
        resume=False,
        sources=(imported.source,),
        behaviour_arrays=imported.behaviour_arrays,
    )
    try:
        rows_read = 0
        for episode, rows_read in imported.episodes:
            writer.add_episode(**episode)
            if progress:
                progress(rows_read, imported.source_rows)
        if progress and rows_read != imported.source_rows:  # rows no episode counted (a last final row)
            progress(imported.source_rows, imported.source_rows)
    except BaseException:
        writer.abort()  # an import is re-run from the source, never resumed
        raise
    return writer.close()


def foreign_provenance(spec: EnvSpec, packages: tuple[str, ...], source: dict, *, also_unknown=()) -> dict:
    """The provenance of data omgmg did not record: what the source says of itself, and what it cannot."""
    return {
        "packages": package_versions((*packages, "numpy", "omgmg")),
        "source": source,
        "layouts": layouts(spec),
        "episode_seeds": [],
        "unknown": [*NOT_RECORDED, *also_unknown],
    }


def check_action_bound(source, actions: np.ndarray, bound: float) -> None:
    """Refuse continuous actions outside the bound the spec will claim, naming the option that fixes it."""
    worst = float(np.abs(actions).max(initial=0.0))
    if worst > bound:
        raise DatasetError(
            f"{source}: actions reach {worst:.4g}, outside [-{bound}, {bound}]; "
            "pass the task's real bound as <<action_bound=...>>"
        )


@contextmanager
def fetched(location, out) -> Iterator[tuple[Path, dict | None]]:
    """(a local path for the source ``location``, its origin or None). A local path is used as it is; a URL's
    file is fetched (``hf://`` into the hub's cache, pinned; others into a folder beside ``out``); a ``.zip`` is
    unpacked into a folder beside ``out``, every member checked to stay inside it. What was made aside is
    removed when the import ends, whatever its outcome."""
    out = Path(out)
    aside = None
    try:
        origin = None
        if is_remote(str(location)):
            location = pin(str(location)) if is_hub(str(location)) else str(location)
            if is_hub(location):
                path = fetch_file(location)
            else:
                aside = _aside(out)
                path = aside / location.rstrip("/").rsplit("/", 1)[-1]
                _fetch_url(location, path)
            origin = {"location": location}
        else:
            path = Path(location)
        if path.suffix == ".zip" and path.is_file():
            origin = {**(origin or {"location": path.name}), "sha256": file_sha256(path)}
            aside = aside or _aside(out)
            unpacked = aside / "unpacked" / _zip_folder(location)
            path = _unzip(path, unpacked, location)
            try:
                yield path, origin
            except (DatasetError, RequestError) as e:  # name the archive, not the folder it was unpacked into
                if e.args and isinstance(e.args[0], str):
                    e.args = (e.args[0].replace(str(unpacked), f"{location}:"), *e.args[1:])
                raise
            return
        yield path, origin
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _aside(out: Path) -> Path:
    """A folder beside ``out`` for what an import fetches and unpacks, named after this process; those of
    imports that were killed (their process is gone) are removed first, so none piles up."""
    with os_errors(out.parent, "making a folder for the fetched source in"):
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{glob.escape(out.name)}.fetch-*"):
            pid = stale.name.rsplit(".fetch-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.fetch-{os.getpid()}-", dir=out.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fetch_url(url: str, target: Path) -> None:
    fs, path = filesystem(url)
    try:
        data = retrying(url, lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise DatasetError(f"{url}: no file there") from None
    target.write_bytes(data)


def _zip_folder(location) -> str:
    """Where a zip's members go: below the two folders that held it (``core/smac_v2/x.zip`` -> core/smac_v2),
    so a vault inside reads as ``{source}/{env_name}/{scenario}.vlt``, the path its task is read from."""
    parts = [p for p in str(location).replace("\\", "/").split("/")[:-1] if p and "@" not in p and ":" not in p]
    return "/".join(parts[-2:]) or "archive"


def _unzip(archive: Path, into: Path, location) -> Path:
    """Unpack ``archive`` into ``into``; the one folder (or vault) it holds, else ``into`` itself."""
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is not None:
                raise DatasetError(f"{location}: the archive is damaged (member {bad} fails its CRC check)")
            root = into.resolve()
            for member in z.infolist():
                target = (into / member.filename).resolve()
                if not target.is_relative_to(root) or member.filename.startswith("/"):
                    raise DatasetError(f"{location}: the archive's member {member.filename!r} would land outside it")
            with os_errors(into, "unpacking an archive"):  # a full disk is one line, as for any output
                into.mkdir(parents=True, exist_ok=True)
                z.extractall(into)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{location} is not a readable zip archive ({e})") from None
    vaults = sorted(into.glob("*.vlt")) or sorted(into.glob("*/*.vlt")) or sorted(into.glob("*/*/*.vlt"))
    if len(vaults) == 1:
        return vaults[0]
    top = [p for p in into.iterdir()]
    if not top:
        raise RequestError(f"{location}: the archive is empty")
    return top[0] if len(top) == 1 else into
