"""``omgmg-data publish``: put a dataset where others can read it (an S3-compatible bucket, Google Cloud
Storage, a Hugging Face hub dataset repository, or a folder), with a dataset card and a manifest, and
prove the published copy good by reading it back.

What a published location holds, beside the store's own files (its chunks carry their checksums):

- ``README.md``: the dataset card, a YAML header the Hugging Face hub reads (license, tags, task
  category, the dataset's size), then the card (task, level, returns, coverage, actions on a bound,
  provenance), a return histogram (``returns.png``) and how to load it with omgmg and with plain zarr;
- ``MANIFEST.sha256``: the sha256 of every file, in ``sha256sum -c`` form;
- ``.omgmg-publish.json``: omgmg's mark, written first: which dataset is being published there and
  whether it is complete.

On the hub a publish is one commit (every file at once, or none), prepared against the commit the branch
named when it started (a publish racing another is refused by the hub); the card goes to the
repository's root ``README.md`` when the dataset is published at the root. Elsewhere, order makes an
interrupted publish safe: the mark first, then every file but the store's root
``zarr.json``, then the card and the manifest, the root ``zarr.json`` last. Until that last file lands
the location is no dataset (every reader says "no zarr.json there"), so nothing incomplete looks
complete. Publishing again to the same location resumes: files already there at their size are kept.
A location that holds anything without omgmg's mark is never written to; one that holds another
dataset omgmg published is replaced only with ``overwrite`` (``--force``), and only when it holds
nothing but what that publish wrote.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from omgmg.datakit.card import card, card_rows, plot_returns
from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import DatasetError, RequestError
from omgmg.datakit.hub import is_hub
from omgmg.datakit.integrity import file_sha256
from omgmg.datakit.outputs import OutputLock, data_home, make_parent
from omgmg.datakit.remote import filesystem, is_remote, retrying
from omgmg.datakit.validate import validate

MARK = ".omgmg-publish.json"
MANIFEST = "MANIFEST.sha256"
CARD = "README.md"
HISTOGRAM = "returns.png"
ROOT = "zarr.json"


def publish(
    dataset,
    location: str,
    *,
    license: str = "other",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Publish the local dataset ``dataset`` at ``location``; see the module docstring. Returns what was
    done: {"location", "files", "uploaded", "kept", "content_sha256"}."""
    if is_remote(dataset):
        raise RequestError(f"{dataset} is remote: download it first, then publish the local copy")
    ds = open_dataset(dataset)
    problems = validate(ds.path)
    if problems:
        raise DatasetError(f"{ds.path} is not valid ({problems[0]}); only a valid dataset is published")
    content = ds.content_sha256()
    if is_hub(location):
        return _publish_to_hub(ds, location, content, license=license, overwrite=overwrite, progress=progress)
    target = _Target(location)
    with _lock(location):
        return _publish(ds, target, content, license=license, overwrite=overwrite, progress=progress)


def _publish_to_hub(ds: Dataset, location: str, content: str, *, license: str, overwrite: bool, progress) -> dict:
    """A hub repository takes a publish as one commit: every file appears at once or none does, so there is
    nothing to resume; the commit names the revision it was prepared against (``parent_commit``), so a
    publish racing another is refused by the hub instead of mixing with it."""
    import huggingface_hub as hub

    from omgmg.datakit.hub import HubLocation, describe, parse, pin

    where = parse(location)
    if where.pinned:
        raise RequestError(f"{location}: a commit cannot be published to; name a branch (e.g. @main) or none")
    base = parse(pin(location))
    prefix = f"{where.path}/" if where.path else ""
    api = hub.HfApi()
    try:
        held = {
            f.path[len(prefix) :]: f
            for f in api.list_repo_tree(
                where.repo_id, where.path or None, repo_type="dataset", revision=base.revision, recursive=True
            )  # fmt: skip
            if isinstance(f, hub.hf_api.RepoFile)
        }
    except hub.errors.EntryNotFoundError:
        held = {}
    except Exception as e:  # noqa: BLE001 - the hub's errors come in many types
        raise DatasetError(f"{location}: {describe(e, where)}") from None
    old = _hub_claim(api, where, base, held, content, overwrite)
    if old == "same":
        _read_back(base.url(), content)
        return {"location": base.url(), "files": len(held), "uploaded": 0, "kept": len(held), "content_sha256": content}
    with tempfile.TemporaryDirectory() as tmp:
        files = {**_local_files(ds.path), **_card_files(ds, Path(tmp), license)}
        manifest = _manifest(files)
        mark = _mark_record(ds, content, state="complete", files=[*sorted(files), MANIFEST])
        ops = [hub.CommitOperationDelete(prefix + rel) for rel in sorted(old)]
        ops += [hub.CommitOperationAdd(prefix + rel, str(path)) for rel, path in sorted(files.items())]
        ops += [hub.CommitOperationAdd(prefix + MANIFEST, manifest), hub.CommitOperationAdd(prefix + MARK, mark)]
        if progress:
            progress(0, 1)
        try:
            commit = api.create_commit(
                where.repo_id, ops, repo_type="dataset", revision=where.revision, parent_commit=base.revision,
                commit_message=f"omgmg-data publish: {ds.spec.name} {ds.level or ''}".strip(),
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{location}: the commit was refused ({describe(e, where)}); nothing changed") from None
    published = HubLocation(where.repo_id, commit.oid, where.path).url()
    if progress:
        progress(1, 1)
    _read_back(published, content)
    return {"location": published, "files": len(files) + 2, "uploaded": len(files) + 2, "kept": 0,
            "content_sha256": content}  # fmt: skip


def _hub_claim(api, where, base, held: dict, content: str, overwrite: bool):
    """The files a hub publish replaces (omgmg's earlier publish there), "same" when this dataset is already
    published there; :func:`_judge` refuses the rest."""
    mark = None
    if MARK in held:
        from omgmg.datakit.hub import HubLocation, fetch_file

        mark_url = HubLocation(base.repo_id, base.revision, f"{base.path}/{MARK}" if base.path else MARK).url()
        try:
            mark = json.loads(fetch_file(mark_url).read_text())
        except (OSError, ValueError, DatasetError):
            mark = None
    verdict = _judge(where.url(), held, mark, content, overwrite)
    return {} if verdict == "fresh" else "same" if verdict == "same" else held


def _judge(location: str, held, mark: dict | None, content: str, overwrite: bool) -> str:
    """What a publish may do where ``held`` (file names) and omgmg's ``mark`` are: "fresh" (nothing there),
    "same" (this dataset, finished or not), "replace" (another dataset omgmg published there, complete, with
    nothing added since, and ``overwrite``); anything else is refused in one line."""
    if not held:
        return "fresh"
    if not isinstance(mark, dict) or mark.get("written_by") != "omgmg":
        raise RequestError(
            f"{location} already holds {len(held)} file(s) that omgmg did not publish (no {MARK}); omgmg never "
            "writes there: choose another location"
        )
    if mark.get("dataset", {}).get("content_sha256") == content:
        return "same"
    if not overwrite:
        raise RequestError(
            f"{location} holds another dataset omgmg published ({mark.get('dataset', {}).get('task')}, "
            f"{mark.get('dataset', {}).get('level')}); pass <<overwrite=True>> to replace it, or choose another "
            "location"
        )
    strangers = sorted(set(held) - set(mark.get("files") or []) - {MARK})
    if mark.get("state") != "complete" or strangers:
        what = ", ".join(strangers[:3]) or "an unfinished publish"
        raise RequestError(
            f"{location} holds files the earlier publish did not list ({what}): omgmg replaces only what it "
            "wrote; remove them yourself or choose another location"
        )
    return "replace"


def _lock(location: str) -> OutputLock:
    """One publish per location on this machine (a second is refused, naming the first). A bucket has no
    lock of its own: the lock is a file in ``$OMGMG_HOME/locks`` named after the location."""
    if not is_remote(location):
        make_parent(Path(location))
        return OutputLock(Path(location), "publish location")
    folder = data_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return OutputLock(folder / re.sub(r"[^A-Za-z0-9._-]+", "_", location), "publish location")


def _publish(ds: Dataset, target: _Target, content: str, *, license: str, overwrite: bool, progress) -> dict:
    location = target.location
    kept_names = target.claim(ds, content, overwrite)

    local = _local_files(ds.path)
    with tempfile.TemporaryDirectory() as tmp:
        extras = _card_files(ds, Path(tmp), license)
        files = {**local, **extras}
        manifest = _manifest(files)
        order = [rel for rel in sorted(local) if rel != ROOT] + sorted(extras)
        uploaded = 0
        for k, rel in enumerate(order):
            if kept_names.get(rel) != files[rel].stat().st_size:
                target.put(rel, files[rel].read_bytes())
                uploaded += 1
            if progress:
                progress(k + 1, len(order) + 2)
        target.put(MANIFEST, manifest)
        target.put(ROOT, local[ROOT].read_bytes())  # last: from now on the location is a dataset
        if progress:
            progress(len(order) + 2, len(order) + 2)
    _read_back(location, content)
    target.mark(ds, content, state="complete", files=[*sorted(files), MANIFEST])
    return {
        "location": location,
        "files": len(files) + 1,
        "uploaded": uploaded + 2,
        "kept": len(order) - uploaded,
        "content_sha256": content,
    }


class _Target:
    """The publish location: a prefix of a bucket (any fsspec filesystem) or a local folder."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        if is_remote(location):
            self.fs, self.root = filesystem(location)
            self.root = self.root.rstrip("/")
        else:
            import fsspec

            self.fs, self.root = fsspec.filesystem("file"), str(Path(location).absolute())

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def listing(self) -> dict[str, int]:
        """Every object under the location: relative name -> size."""
        try:
            found = retrying(f"{self.location} (listing it)", lambda: self.fs.find(self.root, detail=True))
        except FileNotFoundError:
            return {}
        return {p[len(self.root) :].lstrip("/"): int(info.get("size") or 0) for p, info in found.items()}

    def put(self, rel: str, data: bytes) -> None:
        if not is_remote(self.location):
            Path(self._path(rel)).parent.mkdir(parents=True, exist_ok=True)
        retrying(f"{self.location}/{rel} (writing it)", lambda: self.fs.pipe_file(self._path(rel), data))

    def read_mark(self) -> dict | None:
        try:
            return json.loads(retrying(f"{self.location}/{MARK}", lambda: self.fs.cat_file(self._path(MARK))))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def mark(self, ds: Dataset, content: str, *, state: str, files: list[str] | None = None) -> None:
        self.put(MARK, _mark_record(ds, content, state=state, files=files))

    def claim(self, ds: Dataset, content: str, overwrite: bool) -> dict[str, int]:
        """Make the location ours for this dataset; the files already there that a resume may keep."""
        held = self.listing()
        verdict = _judge(self.location, held, self.read_mark() if held else None, content, overwrite)
        if verdict == "same":  # resume (the root zarr.json is written again last) or republish: check and keep
            return {k: v for k, v in held.items() if k not in (MARK, ROOT, MANIFEST)}
        if verdict == "replace":
            self.put(ROOT, b"")  # the old dataset stops being one first
            for rel in sorted(held):
                if rel != MARK:
                    retrying(f"{self.location}/{rel} (removing it)", lambda rel=rel: self.fs.rm_file(self._path(rel)))
        self.mark(ds, content, state="uploading")
        return {}


def _manifest(files: dict[str, Path]) -> bytes:
    """Every file's sha256, as ``sha256sum`` writes them (``sha256sum -c MANIFEST.sha256`` checks a copy)."""
    return "".join(f"{file_sha256(p)}  {rel}\n" for rel, p in sorted(files.items())).encode()


def _mark_record(ds: Dataset, content: str, *, state: str, files: list[str] | None = None) -> bytes:
    """omgmg's mark on a publish location: which dataset, whether complete, and (then) every file it wrote."""
    record = {
        "written_by": "omgmg",
        "state": state,
        "dataset": {"task": ds.spec.name, "level": ds.level, "content_sha256": content},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"files": files} if files is not None else {}),
    }
    return json.dumps(record, indent=2).encode()


def _local_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _read_back(location: str, content: str) -> None:
    """The published copy, read through the location as any user will: valid, and the same data."""
    problems = validate(location)
    if problems:
        raise DatasetError(f"{location} was published but reads back damaged: {problems[0]}; publish it again")
    if open_dataset(location).content_sha256() != content:
        raise DatasetError(f"{location} reads back as other data than was published; publish it again")


def _card_files(ds: Dataset, folder: Path, license: str) -> dict[str, Path]:
    plot_returns(ds, folder / HISTOGRAM)
    (folder / CARD).write_text(card_markdown(ds, license=license))
    return {CARD: folder / CARD, HISTOGRAM: folder / HISTOGRAM}


def card_markdown(ds: Dataset, *, license: str = "other") -> str:
    """The dataset card as a hub README: a YAML header, the card's lines, the histogram, how to load it."""
    c = card(ds)
    n = c["n_transitions"]
    size = next(
        (name for limit, name in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"))
         if n < limit),
        "1M<n<10M",
    )  # fmt: skip
    header = "\n".join(
        [
            "---",
            f"license: {license}",
            "task_categories:",
            "  - reinforcement-learning",
            "tags:",
            "  - offline-reinforcement-learning",
            "  - multi-agent",
            "  - omgmg",
            f"  - {c['suite']}",
            f"  - {c['task'].lower()}",
            f"  - {c['level'] or 'no-level'}",
            "size_categories:",
            f"  - {size}",
            "---",
        ]
    )
    name = f"{c['suite']}/{c['task']} {c['level'] or ''}".strip()
    lines = [f"| {k.strip()} | {str(v).replace('|', '/')} |" for k, v in card_rows(c)]
    return f"""{header}

# {name}

An offline multi-agent RL dataset written by [omgmg](https://pypi.org/project/omgmg/) {c["omgmg_version"]}:
{c["n_episodes"]} episodes, {c["n_transitions"]} transitions, {c["n_agents"]} agents. A Zarr v3 store (format
{c["format_version"]}: `schemas/dataset-v{c["format_version"]}.md` in omgmg), every chunk with a crc32c checksum;
`MANIFEST.sha256` lists every file's sha256 (`sha256sum -c MANIFEST.sha256`).

| | |
|---|---|
{chr(10).join(lines)}

![returns]({HISTOGRAM})

## Loading it

With omgmg (`pip install "omgmg[remote]"`), straight from where it is published or from a copy:

```python
from omgmg.datakit import TransitionLoader, open_dataset

ds = open_dataset("LOCATION")        # this folder's URL: s3://..., hf://datasets/ORG/REPO/PATH, or a path
batch = TransitionLoader(ds, batch_size=256, seed=0).sample()
```

```bash
omgmg-data validate LOCATION         # every chunk's checksum and every value
omgmg train --dataset LOCATION --algo omgmg
```

With plain zarr (v3): steps are time-major, then agents.

```python
import zarr

g = zarr.open_group("LOCATION", mode="r")
obs = g["steps/obs"][:]              # (T, N, O)
actions = g["steps/actions"][:]
lengths = g["episodes/length"][:]    # episodes lie end to end: episode k starts at lengths[:k].sum()
print(dict(g.attrs)["env"])          # the task, agents and spaces
```
"""
