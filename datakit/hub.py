"""Hugging Face hub locations: ``hf://datasets/ORG/REPO[@REVISION]/PATH``, read through ``huggingface_hub``.

A hub location is read like any other URL (:mod:`omgmg.datakit.remote`): a Zarr store through the hub's fsspec
filesystem, a single file (a zipped vault, an HDF5 file) through its download API and cache
(``HF_HOME``). ``huggingface_hub`` brings the rest: ``HF_ENDPOINT`` (a mirror, or the tests' local stand-in),
the token (``HF_TOKEN`` or ``hf auth login``) for private and gated repositories, offline mode.

A branch or tag moves; a commit does not. Every location is *pinned* before it is read: its revision
(default ``main``) is resolved to the commit it names now, and that commit is what the run's config, an
import's provenance and the command's output record, so the same data can be had again.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from omgmg.datakit.errors import BackendUnavailable, DatasetError, RequestError

SCHEME = "hf://"
INSTALL = "pip install 'omgmg[remote]'"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_PR_REVISION = re.compile(r"refs/pr/\d+")


def is_hub(location) -> bool:
    return isinstance(location, str) and location.startswith(SCHEME)


@dataclass(frozen=True)
class HubLocation:
    """A path inside a hub dataset repository, at a revision (a branch, a tag or a commit)."""

    repo_id: str
    revision: str
    path: str

    @property
    def pinned(self) -> bool:
        return bool(_COMMIT.fullmatch(self.revision))

    def url(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        return f"{SCHEME}datasets/{self.repo_id}@{self.revision}{tail}"


def parse(url: str) -> HubLocation:
    """``hf://datasets/ORG/REPO[@REVISION][/PATH]`` (REVISION: a branch, a tag, a commit or ``refs/pr/N``)."""
    rest = url[len(SCHEME) :] if url.startswith(SCHEME) else None
    if rest is None or not rest.startswith("datasets/"):
        raise RequestError(
            f"{url} is not a hub dataset location; write hf://datasets/ORG/REPO[@REVISION]/PATH "
            "(omgmg reads dataset repositories)"
        )
    parts = rest[len("datasets/") :].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RequestError(f"{url} names no repository; write hf://datasets/ORG/REPO[@REVISION]/PATH")
    org, repo, path = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
    revision = "main"
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if revision == "refs" and path.startswith("pr/"):  # refs/pr/N: the revision holds two slashes
            number, _, path = path[3:].partition("/")
            revision = f"refs/pr/{number}"
        if not revision or (revision.startswith("refs/") and not _PR_REVISION.fullmatch(revision)):
            raise RequestError(f"{url}: the revision after '@' is empty or malformed")
    return HubLocation(f"{org}/{repo}", revision, path.strip("/"))


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise BackendUnavailable(f"hf:// locations need huggingface_hub ({e}): {INSTALL}") from None
    return huggingface_hub


def pin(url: str) -> str:
    """The location with its revision resolved to the commit it names now (one request; a commit is kept)."""
    where = parse(url)
    if where.pinned:
        return where.url()
    hub = _hub()
    try:
        info = hub.HfApi().repo_info(where.repo_id, repo_type="dataset", revision=where.revision)
    except Exception as e:  # noqa: BLE001 - the hub's errors come in many types
        raise DatasetError(f"{url}: {describe(e, where)}") from None
    return HubLocation(where.repo_id, info.sha, where.path).url()


def fetch_file(url: str) -> Path:
    """A single file of the hub, downloaded into the hub's cache (or found there): its local path."""
    where = parse(pin(url))
    if not where.path:
        raise RequestError(f"{url} names a repository, not a file in it; add the file's path")
    hub = _hub()
    if not sys.stderr.isatty():  # its bars redraw with carriage returns: in a log, one endless line
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        return Path(hub.hf_hub_download(where.repo_id, where.path, repo_type="dataset", revision=where.revision))
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{url}: {describe(e, where)}") from None


def describe(e: Exception, where: HubLocation) -> str:
    """What the hub said, in words a user can act on."""
    name = type(e).__name__
    if name == "RevisionNotFoundError":
        return f"the repository has no revision {where.revision!r} (a branch, tag or commit of {where.repo_id})"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return (
            f"no dataset repository {where.repo_id} that this token may read (a private or gated one needs "
            "HF_TOKEN or `hf auth login`)"
        )
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"the repository {where.repo_id} at {where.revision} has no file {where.path!r}"
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return "the hub could not be reached and the file is not in the local cache (HF_HUB_OFFLINE, HF_ENDPOINT)"
    status = getattr(getattr(e, "response", None), "status_code", None)
    line = str(e).strip().splitlines()[0] if str(e).strip() else name
    return f"HTTP {status}: {line[:200]}" if status else f"{name}: {line[:200]}"
