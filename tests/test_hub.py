"""Hugging Face hub locations, against a local stand-in for the hub (tests/hub_server.py) that answers the
endpoints huggingface_hub calls: stores read at a pinned commit, zipped vaults imported in one step."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import fixture_datasets
from hub_server import HubServer

from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli
from omgmg.datakit import open_dataset
from omgmg.datakit.errors import DatasetError, RequestError
from omgmg.datakit.hub import parse


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # the hub's cache, fresh per test
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        import huggingface_hub.constants as constants  # read at import: point it at the stand-in too

        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
        yield server


def test_locations_parse_into_repository_revision_and_path():
    assert parse("hf://datasets/org/data/a/b.zarr") == parse("hf://datasets/org/data@main/a/b.zarr")
    where = parse("hf://datasets/org/data@refs/pr/3/x.zip")
    assert (where.repo_id, where.revision, where.path) == ("org/data", "refs/pr/3", "x.zip")
    for bad in ("hf://org/data/x.zarr", "hf://datasets/org", "hf://datasets/org/data@/x"):
        with pytest.raises(RequestError):
            parse(bad)


@pytest.mark.slow
def test_a_store_on_the_hub_is_read_at_the_commit_its_branch_named(hub, tmp_path):
    fixture_datasets(tmp_path, continuous=6, discrete=4)
    first = hub.commit("org/data", HubServer.folder(tmp_path / "c.zarr", "stores/x.zarr"))
    ds = open_dataset("hf://datasets/org/data/stores/x.zarr")
    assert ds.path == f"hf://datasets/org/data@{first}/stores/x.zarr"  # pinned: what runs and outputs record
    local = open_dataset(tmp_path / "c.zarr")
    assert ds.content_sha256() == local.content_sha256()
    assert np.array_equal(ds.read("steps/obs"), local.read("steps/obs"))

    hub.commit("org/data", HubServer.folder(tmp_path / "d.zarr", "stores/x.zarr"), replace=True)  # main moves on
    assert open_dataset(f"hf://datasets/org/data@{first}/stores/x.zarr").content_sha256() == local.content_sha256()
    assert open_dataset("hf://datasets/org/data/stores/x.zarr").spec.name != local.spec.name

    run = tmp_path / "run"
    trained = CliRunner().invoke(train_cli, ["train", "--dataset", f"hf://datasets/org/data@{first}/stores/x.zarr",
                                             "--algo", "bc", "--steps", "5", "--no-eval", "--hidden", "8",
                                             "--out", str(run)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert json.loads((run / "config.json").read_text())["dataset"] == f"hf://datasets/org/data@{first}/stores/x.zarr"

    got = CliRunner().invoke(data_cli, ["download", f"hf://datasets/org/data@{first}/stores/x.zarr",
                                        "--out", str(tmp_path / "copy.zarr")])  # fmt: skip
    assert got.exit_code == 0 and first in got.output, got.output
    assert _files(tmp_path / "copy.zarr") == _files(tmp_path / "c.zarr")  # byte for byte


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_hub_locations_are_one_line(hub, tmp_path):
    fixture_datasets(tmp_path, continuous=4, discrete=0)
    hub.commit("org/data", HubServer.folder(tmp_path / "c.zarr", "stores/x.zarr"))
    says = {
        "hf://datasets/org/data@nobranch/stores/x.zarr": "has no revision 'nobranch'",
        "hf://datasets/org/missing/stores/x.zarr": "no dataset repository org/missing",
        "hf://datasets/org/data/stores/y.zarr": "no zarr.json there",
        "hf://org/data/stores/x.zarr": "write hf://datasets/ORG/REPO",
    }
    for url, said in says.items():
        for args in (["validate", url], ["download", url, "--out", str(tmp_path / "dl.zarr")]):
            result = CliRunner().invoke(data_cli, args)
            assert result.exit_code in (1, 2) and said in result.output, (args, result.output)
            assert "Traceback" not in result.output and not (tmp_path / "dl.zarr").exists()
    with pytest.raises(DatasetError, match="no file 'vaults/none.zip'"):
        from omgmg.datakit.hub import fetch_file

        fetch_file("hf://datasets/org/data/vaults/none.zip")


# ----- zipped vaults, as OG-MARL publishes them (core/<env>/<scenario>.zip holding <scenario>.vlt/) ---------------


def _zipped_vault(tmp_path) -> tuple[bytes, object]:
    """A vault as OG-MARL's conversion of OMIGA's data writes it, zipped as OG-MARL's hub repository holds it;
    and the dataset importing the unzipped folder gives."""
    pytest.importorskip("flashbax")
    from test_ogmarl import omiga_conversion_steps, record_vault

    from omgmg.datakit.ogmarl import import_vault

    vault = record_vault(tmp_path / "vaults", "omiga", "mamujoco", "3hopper", "Medium", omiga_conversion_steps()[0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in sorted(vault.parent.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(vault.parent.parent).as_posix())  # 3hopper.vlt/Medium/...
    return buffer.getvalue(), import_vault(vault, tmp_path / "direct.zarr")


def test_a_zipped_vault_on_the_hub_is_fetched_unpacked_and_imported_in_one_step(hub, tmp_path):
    archive, direct = _zipped_vault(tmp_path)
    sha = hub.commit("org/og", {"prior_work/omiga/mamujoco/3hopper.zip": archive})
    out = tmp_path / "out" / "hopper.zarr"
    result = CliRunner().invoke(data_cli, ["import", "og-marl", "hf://datasets/org/og/prior_work/omiga/mamujoco/3hopper.zip",
                                           "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = open_dataset(out)
    assert ds.content_sha256() == direct.content_sha256() and ds.level == "medium"
    import hashlib

    origin = ds.meta["collection"]["origin"]
    assert origin == {
        "location": f"hf://datasets/org/og@{sha}/prior_work/omiga/mamujoco/3hopper.zip",
        "sha256": hashlib.sha256(archive).hexdigest(),
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["hopper.zarr"]  # nothing unpacked is left beside it
    killed = out.parent / ".b.zarr.fetch-999999999-abc"  # an import killed mid-unpack (its process is gone)
    (killed / "unpacked").mkdir(parents=True)
    requests = len(hub.requests)
    again = CliRunner().invoke(data_cli, ["import", "og-marl", origin["location"], "--out", str(out.parent / "b.zarr")])
    assert again.exit_code == 0 and not any(p.endswith(".zip") for _, p in hub.requests[requests:])  # cached
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.zarr", "hopper.zarr"]  # the killed one's leftovers too


def test_a_damaged_or_hostile_zip_is_refused_and_nothing_is_written(hub, tmp_path):
    archive, _ = _zipped_vault(tmp_path)
    cut = archive[: len(archive) // 2]
    escape = io.BytesIO()
    with zipfile.ZipFile(escape, "w") as z:
        z.writestr("../../outside.txt", b"x")
    flipped = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        first = z.infolist()[-1]
        flipped[first.header_offset + 30 + len(first.filename) + 1] ^= 0xFF  # a byte of the last member's data
    hub.commit("org/og", {"core/mamujoco/cut.zip": cut, "core/mamujoco/escape.zip": escape.getvalue(),
                          "core/mamujoco/flipped.zip": bytes(flipped)})  # fmt: skip
    says = {"cut": "not a readable zip", "escape": "would land outside it", "flipped": "fails its CRC check"}
    for name, said in says.items():
        out = tmp_path / "out" / f"{name}.zarr"
        result = CliRunner().invoke(data_cli, ["import", "og-marl", f"hf://datasets/org/og/core/mamujoco/{name}.zip",
                                               "--out", str(out)])  # fmt: skip
        assert result.exit_code == 1 and said in result.output, (name, result.output)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path.parent / "outside.txt").exists()


# ----- the registry: public datasets by name, checked against their publisher's statistics ------------------------


def test_the_registry_names_the_papers_data_with_its_publishers_numbers():
    from omgmg.datakit.format import LEVELS
    from omgmg.datakit.ogmarl import vault_task
    from omgmg.datakit.registry import known_datasets

    known = known_datasets()
    hopper = known["og-marl/omiga/hopper-expert"]
    assert hopper.expected["trajectories"] == 1481 and round(hopper.expected["return_mean"], 1) == 2452.0
    assert sum(name.startswith("og-marl/omiga/") for name in known) == 12  # 3 tasks x 4 levels: the paper's data
    for k in known.values():
        assert parse(k.location).path.endswith(".zip") and k.level in LEVELS
        vault_task(*k.og_marl_task.split("/"))  # a task omgmg imports
    local = CliRunner().invoke(data_cli, ["list", "--json"])  # without --remote: what $OMGMG_HOME holds
    assert local.exit_code == 0 and isinstance(json.loads(local.output), list)
    listed = CliRunner().invoke(data_cli, ["list", "--remote"], env={"COLUMNS": "200"})
    assert (
        listed.exit_code == 0 and "og-marl/omiga/hopper-expert" in listed.output and "2452.0 ± 1097.9" in listed.output
    )


def _publisher_numbers(steps) -> dict:
    """What OG-MARL's analyse_vault reports for these rows, computed here step by step (agent 0's rewards
    summed up to each row where every agent's terminal flag is set)."""
    returns, total = [], 0.0
    for row in steps:
        total += float(row["rewards"][0])
        if row["terminals"].all():
            returns.append(total)
            total = 0.0
    r = np.asarray(returns)
    return {"transitions": len(steps), "trajectories": len(r), "return_mean": float(r.mean()),
            "return_std": float(r.std()), "return_min": float(r.min()), "return_max": float(r.max())}  # fmt: skip


def test_get_fetches_by_name_checks_the_publishers_numbers_and_refuses_a_tampered_copy(hub, tmp_path, monkeypatch):
    pytest.importorskip("flashbax")
    from test_ogmarl import omiga_conversion_steps, record_vault

    steps = omiga_conversion_steps()[0]
    vault = record_vault(tmp_path / "vaults", "omiga", "mamujoco", "3hopper", "Medium", steps)

    def zipped(folder):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(folder.parent).as_posix())
        return buffer.getvalue()

    tampered_steps = [dict(row) for row in steps]
    tampered_steps[3] = {**steps[3], "rewards": steps[3]["rewards"] + 5.0}  # one reward changed
    tampered = record_vault(tmp_path / "tampered", "omiga", "mamujoco", "3hopper", "Medium", tampered_steps)
    sha = hub.commit("lab/og", {"prior_work/omiga/mamujoco/3hopper.zip": zipped(vault.parent),
                                "mirror/omiga/mamujoco/3hopper.zip": zipped(tampered.parent)})  # fmt: skip
    entry = {"uid": "Medium", "og_marl_task": "mamujoco/3hopper", "level": "medium", "recorded_on": "test",
             "evaluable": "yes", "generation": "test", "expected": _publisher_numbers(steps)}  # fmt: skip
    registry = {"format": 1, "sources": {"test": "tests/test_hub.py"}, "datasets": {
        "lab/hopper-medium": {**entry, "location": "hf://datasets/lab/og/prior_work/omiga/mamujoco/3hopper.zip"},
        "lab/hopper-medium-mirror": {**entry, "location": "hf://datasets/lab/og/mirror/omiga/mamujoco/3hopper.zip"},
    }}  # fmt: skip
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    monkeypatch.setenv("OMGMG_REGISTRY", str(tmp_path / "registry.json"))

    out = tmp_path / "got" / "hopper.zarr"
    got = CliRunner().invoke(data_cli, ["get", "lab/hopper-medium", "--out", str(out)])
    assert got.exit_code == 0 and "matches its publisher's statistics" in got.output, got.output
    collection = open_dataset(out).meta["collection"]
    assert collection["origin"]["location"] == f"hf://datasets/lab/og@{sha}/prior_work/omiga/mamujoco/3hopper.zip"
    assert collection["publisher_statistics"]["matched_with_done_flags"] == "terminals"

    bad = tmp_path / "got" / "mirror.zarr"
    refused = CliRunner().invoke(data_cli, ["get", "lab/hopper-medium-mirror", "--out", str(bad)])
    assert refused.exit_code == 1 and "does not match what its publisher says" in refused.output, refused.output
    assert "return_mean" in refused.output and "Traceback" not in refused.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["hopper.zarr"]  # nothing written for the mirror
    unknown = CliRunner().invoke(data_cli, ["get", "lab/hopper", "--out", str(bad)])
    assert unknown.exit_code == 2 and "did you mean lab/hopper-medium" in unknown.output


# ----- the paper's data in a sweep: known datasets fetched by name, reported beside a published table -------------


def test_the_shipped_omiga_data_spec_runs_every_published_method_on_the_twelve_datasets():
    from omgmg.experiments.spec import load_published, load_spec

    spec = load_spec("omiga-data")
    cells = spec.cells()
    assert len(cells) == 12 * 8 * 5 and {c.dataset.known for c in cells} == {
        name for name in __import__("omgmg.datakit.registry", fromlist=["x"]).known_datasets() if "/omiga/" in name
    }
    published = load_published(spec.published)
    assert published["rows"]["og-marl/omiga/hopper|medium"]["bc"] == [511.95, 7.43]  # ComaDICE's table
    for row in published["rows"].values():
        assert set(row) <= set(spec.algorithms)  # every published method runs here under omgmg's name
    ant = next(c for c in cells if c.dataset.known == "og-marl/omiga/ant-medium")
    hopper = next(c for c in cells if c.dataset.known == "og-marl/omiga/hopper-medium")
    assert not ant.dataset.evaluable and hopper.dataset.evaluable


def test_a_sweep_on_a_known_dataset_fetches_it_once_and_reports_beside_the_published_numbers(hub, tmp_path,
                                                                                         monkeypatch):  # fmt: skip
    pytest.importorskip("flashbax")
    from test_ogmarl import omiga_conversion_steps, record_vault

    steps = omiga_conversion_steps()[0]
    vault = record_vault(tmp_path / "vaults", "omiga", "mamujoco", "3hopper", "Medium", steps)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in sorted(vault.parent.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(vault.parent.parent).as_posix())
    hub.commit("lab/og", {"prior_work/omiga/mamujoco/3hopper.zip": buffer.getvalue()})
    entry = {"location": "hf://datasets/lab/og/prior_work/omiga/mamujoco/3hopper.zip", "uid": "Medium",
             "og_marl_task": "mamujoco/3hopper", "level": "medium", "recorded_on": "test", "evaluable": "yes",
             "generation": "test", "expected": _publisher_numbers(steps)}  # fmt: skip
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format": 1, "datasets": {"og-marl/omiga/hopper-medium": entry}}))
    monkeypatch.setenv("OMGMG_REGISTRY", str(registry))
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))  # where a sweep keeps the datasets it fetches
    spec = tmp_path / "paper-data.toml"
    spec.write_text(
        'name = "paper-data"\nalgorithms = ["bc", "omiga"]\nseeds = [0]\npublished = "comadice-mamujoco"\n'
        "[budget]\nsteps = 100\neval_every = 100\neval_episodes = 1\n"
        '[[datasets]]\nknown = ["og-marl/omiga/hopper-medium"]\n'
        "[smoke]\nseeds = [0]\nsteps = 100\neval_every = 100\neval_episodes = 1\n"
    )
    out = tmp_path / "sweep"
    ran = CliRunner().invoke(train_cli, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert ran.exit_code == 0, ran.output
    fetches = [p for m, p in hub.requests if p.endswith(".zip") and m == "GET"]
    assert len(fetches) == 1  # one fetch for both algorithms' cells
    report = CliRunner().invoke(train_cli, ["report", str(out)])
    assert report.exit_code == 0, report.output
    md = (out / "paper-data.md").read_text()
    assert "Beside the published numbers" in md and "Bui" in md
    bc = next(line for line in md.splitlines() if line.startswith("| og-marl/omiga/hopper | medium | bc |"))
    assert "| 511.9 ± 7.4 |" in bc and bc.count("±") == 2  # ours beside theirs, and the gap


# ----- publishing to a hub repository: one commit, read back; never over files omgmg did not publish -------------


@pytest.mark.slow
def test_publish_to_a_hub_repository_is_one_commit_read_back_at_its_commit(hub, tmp_path, monkeypatch):
    from omgmg.datakit.errors import RequestError
    from omgmg.datakit.publish import publish

    fixture_datasets(tmp_path, continuous=6, discrete=4)
    hub.commit("lab/data", {".gitattributes": b"*.zarr filter=lfs\n"})
    hub.token = "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "wrong")
    refused = CliRunner().invoke(data_cli, ["publish", str(tmp_path / "c.zarr"), "hf://datasets/lab/data/c.zarr"])
    assert refused.exit_code == 1 and "the commit was refused" in refused.output and "nothing changed" in refused.output
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    done = CliRunner().invoke(data_cli, ["publish", str(tmp_path / "c.zarr"), "hf://datasets/lab/data/c.zarr",
                                         "--license", "cc-by-4.0"])  # fmt: skip
    assert done.exit_code == 0 and "read back and validated" in done.output, done.output
    head = hub.repos["lab/data"].refs["main"]
    files = hub.repos["lab/data"].commits[head]
    assert files["c.zarr/README.md"].startswith(b"---\nlicense: cc-by-4.0") and "c.zarr/MANIFEST.sha256" in files
    assert {k: v for k, v in files.items() if k.startswith("c.zarr/") and k[7:] in _files_str(tmp_path / "c.zarr")} == {
        f"c.zarr/{k}": v for k, v in _files_str(tmp_path / "c.zarr").items()
    }  # the store, byte for byte
    assert (
        open_dataset("hf://datasets/lab/data/c.zarr").content_sha256()
        == open_dataset(tmp_path / "c.zarr").content_sha256()
    )

    commits = len(hub.repos["lab/data"].commits)
    again = publish(tmp_path / "c.zarr", "hf://datasets/lab/data/c.zarr")
    assert again["uploaded"] == 0 and len(hub.repos["lab/data"].commits) == commits  # already there: no commit
    with pytest.raises(RequestError, match="another dataset omgmg published"):
        publish(tmp_path / "d.zarr", "hf://datasets/lab/data/c.zarr")
    publish(tmp_path / "d.zarr", "hf://datasets/lab/data/c.zarr", overwrite=True)
    assert (
        open_dataset("hf://datasets/lab/data/c.zarr").content_sha256()
        == open_dataset(tmp_path / "d.zarr").content_sha256()
    )
    hub.commit("lab/data", {"theirs/notes.txt": b"someone else's"})
    with pytest.raises(RequestError, match="omgmg did not publish"):
        publish(tmp_path / "c.zarr", "hf://datasets/lab/data/theirs", overwrite=True)


def test_a_publish_racing_another_commit_is_refused_by_the_hub(hub, tmp_path, monkeypatch):
    import huggingface_hub

    from omgmg.datakit.publish import publish

    fixture_datasets(tmp_path, continuous=4, discrete=0)
    hub.commit("lab/data", {"a.txt": b"a"})
    real = huggingface_hub.HfApi.create_commit

    def someone_commits_first(self, *args, **kwargs):
        hub.commit("lab/data", {"b.txt": b"b"})  # between our look at the branch and our commit
        return real(self, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", someone_commits_first)
    with pytest.raises(DatasetError, match="the commit was refused.*nothing changed"):
        publish(tmp_path / "c.zarr", "hf://datasets/lab/data/c.zarr")
    assert not any(p.startswith("c.zarr/") for p in hub.repos["lab/data"].commits[hub.repos["lab/data"].refs["main"]])


def _files_str(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
