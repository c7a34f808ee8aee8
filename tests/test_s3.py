"""S3 locations against a real S3-compatible server (moto's server mode, tests/s3_server.py) on 127.0.0.1,
with credentials checked: read, stream, download, a missing object, a wrong secret, a server killed
mid-transfer."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fixture_datasets
from s3_server import BUCKET, S3Server

from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli
from omgmg.datakit import DatasetError, TransitionLoader, open_dataset, validate
from omgmg.datakit.download import download

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-data")
    fixture_datasets(root, continuous=8, discrete=6)
    with S3Server() as server:
        server.put(root / "c.zarr", "c.zarr")
        server.put(root / "d.zarr", "d.zarr")
        yield root, server


@pytest.fixture
def env(s3, monkeypatch):
    root, server = s3
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OMGMG_REMOTE_TIMEOUT", "5")
    _forget_clients()
    yield root, server
    _forget_clients()


def _forget_clients():
    """fsspec keeps one filesystem per set of options in a process, its credentials included: a test that
    changes the environment's credentials needs new ones (a command reads them once, at its start)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_bucket_reads_streams_and_downloads_like_the_folder(env, tmp_path):
    root, server = env
    before = server.keys("c.zarr")
    url = f"s3://{BUCKET}/c.zarr"
    local, remote = open_dataset(root / "c.zarr"), open_dataset(url)
    assert remote.content_sha256() == local.content_sha256() and validate(url) == []
    for kw in ({}, {"streaming": True, "block_rows": 64, "resident_blocks": 2}):
        a, b = TransitionLoader(local, 32, seed=3, **kw).sample(), TransitionLoader(remote, 32, seed=3, **kw).sample()
        assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()) if x is not None)
    got = download(url, tmp_path / "copy.zarr")
    assert _files(got) == _files(root / "c.zarr")  # byte for byte
    trained = CliRunner().invoke(train_cli, ["train", "--dataset", url, "--algo", "bc", "--steps", "5", "--no-eval",
                                             "--hidden", "8", "--out", str(tmp_path / "run")])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert server.keys("c.zarr") == before  # read-only


def test_a_wrong_secret_or_a_missing_object_is_one_line(env, tmp_path, monkeypatch):
    root, server = env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    _forget_clients()
    refused = CliRunner().invoke(data_cli, ["validate", f"s3://{BUCKET}/c.zarr"])
    assert refused.exit_code == 1 and "access refused" in refused.output and "AWS_SECRET_ACCESS_KEY" in refused.output
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.env["AWS_SECRET_ACCESS_KEY"])
    _forget_clients()

    server.put(root / "c.zarr", "holed.zarr")
    server.client().delete_object(Bucket=BUCKET, Key="holed.zarr/steps/obs/c/0/0/0")
    url = f"s3://{BUCKET}/holed.zarr"
    for cli, args in (
        (data_cli, ["validate", url]),
        (data_cli, ["download", url, "--out", str(tmp_path / "dl.zarr")]),
        (train_cli, ["train", "--dataset", url, "--algo", "bc", "--steps", "5", "--no-eval",
                     "--out", str(tmp_path / "r")]),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "steps/obs" in result.output and "missing" in result.output, result.output
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no partial download, no run folder
    nothing = CliRunner().invoke(data_cli, ["inspect", f"s3://{BUCKET}/none.zarr"])
    assert nothing.exit_code == 1 and "no zarr.json there" in nothing.output


def test_a_zipped_vault_in_a_bucket_imports_in_one_step(env, tmp_path):
    pytest.importorskip("flashbax")
    from test_ogmarl import omiga_conversion_steps, record_vault

    root, server = env
    vault = record_vault(tmp_path / "vaults", "omiga", "mamujoco", "3hopper", "Medium", omiga_conversion_steps()[0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in sorted(vault.parent.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(vault.parent.parent).as_posix())
    server.client().put_object(Bucket=BUCKET, Key="vaults/omiga/mamujoco/3hopper.zip", Body=buffer.getvalue())
    out = tmp_path / "out" / "h.zarr"
    url = f"s3://{BUCKET}/vaults/omiga/mamujoco/3hopper.zip"
    result = CliRunner().invoke(data_cli, ["import", "og-marl", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert open_dataset(out).meta["collection"]["origin"]["location"] == url
    assert [p.name for p in out.parent.iterdir()] == ["h.zarr"]


def test_a_server_killed_mid_download_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    fixture_datasets(tmp_path / "data", continuous=8, discrete=0)
    with S3Server() as server:
        server.put(tmp_path / "data" / "c.zarr", "c.zarr")
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("OMGMG_REMOTE_TIMEOUT", "2")
        monkeypatch.setenv("OMGMG_REMOTE_RETRIES", "1")
        _forget_clients()

        def kill_after_three(done, total):
            if done == 3:
                server.kill()

        with pytest.raises(DatasetError, match="could not be read"):
            download(f"s3://{BUCKET}/c.zarr", tmp_path / "out" / "c.zarr", progress=kill_after_three)
    assert list((tmp_path / "out").iterdir()) == []
    assert not np.isnan(open_dataset(tmp_path / "data" / "c.zarr").read("steps/obs")).any()


# ----- publishing (issue 40): a card, a manifest, read back; resumable; never over what omgmg did not write ------


def test_publish_to_a_bucket_reads_back_byte_identical_with_its_card_and_manifest(env, tmp_path):
    import hashlib

    from omgmg.datakit.publish import publish

    root, server = env
    url = f"s3://{BUCKET}/published/c.zarr"
    result = CliRunner().invoke(data_cli, ["publish", str(root / "c.zarr"), url, "--license", "cc-by-4.0"])
    assert result.exit_code == 0 and "read back and validated" in result.output, result.output
    held = server.keys("published/c.zarr/")
    card = held["published/c.zarr/README.md"].decode()
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "| level | medium |" in card and "returns.png" in card
    manifest = dict(line.split("  ")[::-1] for line in held["published/c.zarr/MANIFEST.sha256"].decode().splitlines())
    for rel, digest in manifest.items():
        assert hashlib.sha256(held[f"published/c.zarr/{rel}"]).hexdigest() == digest
    copy = download(url, tmp_path / "copy.zarr")
    local = _files(root / "c.zarr")
    assert {k: v for k, v in _files(copy).items() if k in local} == local  # the store, byte for byte
    assert open_dataset(copy).content_sha256() == open_dataset(root / "c.zarr").content_sha256()

    again = publish(root / "c.zarr", url)  # nothing to do but check: every file kept
    assert again["kept"] == again["files"] - 3  # all but the root zarr.json, manifest and mark


def test_an_interrupted_publish_looks_like_no_dataset_and_resumes(env, tmp_path):
    from omgmg.datakit.publish import publish

    root, server = env
    url = f"s3://{BUCKET}/interrupted/c.zarr"

    def stop_after_five(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(root / "c.zarr", url, progress=stop_after_five)
    assert "interrupted/c.zarr/zarr.json" not in server.keys("interrupted/")  # no dataset there yet
    refused = CliRunner().invoke(data_cli, ["validate", url])
    assert refused.exit_code == 1 and "no zarr.json there" in refused.output
    done = publish(root / "c.zarr", url)
    assert done["kept"] >= 4 and validate(url) == []


def test_publish_never_writes_over_what_omgmg_did_not_publish(env):
    from omgmg.datakit.errors import RequestError
    from omgmg.datakit.publish import publish

    root, server = env
    client = server.client()
    client.put_object(Bucket=BUCKET, Key="theirs/c.zarr/notes.txt", Body=b"someone else's")
    for force in ([], ["--force"]):
        result = CliRunner().invoke(data_cli, ["publish", str(root / "c.zarr"), f"s3://{BUCKET}/theirs/c.zarr", *force])
        assert result.exit_code == 2 and "omgmg did not publish" in result.output, result.output
    assert server.keys("theirs/") == {"theirs/c.zarr/notes.txt": b"someone else's"}

    url = f"s3://{BUCKET}/ours/x.zarr"
    publish(root / "c.zarr", url)
    with pytest.raises(RequestError, match="another dataset omgmg published"):
        publish(root / "d.zarr", url)
    client.put_object(Bucket=BUCKET, Key="ours/x.zarr/added-by-hand.txt", Body=b"mine")
    with pytest.raises(RequestError, match="added-by-hand.txt"):
        publish(root / "d.zarr", url, overwrite=True)
    client.delete_object(Bucket=BUCKET, Key="ours/x.zarr/added-by-hand.txt")
    publish(root / "d.zarr", url, overwrite=True)  # only what omgmg published there: replaced
    assert open_dataset(url).content_sha256() == open_dataset(root / "d.zarr").content_sha256()
    assert validate(url) == []


def test_a_second_publish_to_one_location_is_refused_while_the_first_runs(env, tmp_path):
    from omgmg.datakit.errors import OutputError
    from omgmg.datakit.publish import publish

    root, server = env
    url = f"s3://{BUCKET}/twice/c.zarr"
    seen = []

    def second_meanwhile(done, total):
        if done == 2 and not seen:
            with pytest.raises(OutputError, match="in use by another omgmg process") as refused:
                publish(root / "d.zarr", url)
            seen.append(str(refused.value))

    publish(root / "c.zarr", url, progress=second_meanwhile)
    assert seen and open_dataset(url).content_sha256() == open_dataset(root / "c.zarr").content_sha256()


# ----- a sweep at a URL (issue 41): results, runs and the report in the store; resumed on another machine ---------


def _sweep_spec(path, tmp_path, steps=60, every=30):
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "s3sweep"\nalgorithms = ["bc"]\nseeds = [0, 1]\n[budget]\nsteps = {steps}\neval_every = {every}\n'
        f'eval_episodes = 1\n[[datasets]]\npath = "{path}"\n[overrides.bc]\nhidden = 8\n'
        f"[smoke]\nseeds = [0]\nsteps = {steps}\neval_every = {every}\neval_episodes = 1\n"
    )
    return spec


def test_a_sweep_at_a_url_keeps_results_runs_and_report_in_the_store_and_resumes_elsewhere(env, tmp_path,
                                                                                            monkeypatch):  # fmt: skip
    import json

    root, server = env
    url = f"s3://{BUCKET}/sweeps/one"
    spec = _sweep_spec(root / "c.zarr", tmp_path)
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "machine-a"))
    ran = CliRunner().invoke(train_cli, ["sweep", str(spec), "--out", url, "--workers", "1"])
    assert ran.exit_code == 0, ran.output
    held = server.keys("sweeps/one/")
    results = {k: json.loads(v) for k, v in held.items() if k.endswith("/result.json")}
    assert len(results) == 2 and "sweeps/one/sweep.json" in held and "sweeps/one/s3sweep.md" in held
    assert all(k.replace("result.json", "run/checkpoints/latest.pt") in held for k in results)
    scores = {r["cell"]["seed"]: r["score"] for r in results.values()}

    # another machine (its own $OMGMG_HOME, nothing on its disk): nothing trains again
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "machine-b"))
    again = CliRunner().invoke(train_cli, ["sweep", str(spec), "--out", url, "--workers", "1", "--list"])
    assert again.exit_code == 0 and "2 cells, 2 finished" in again.output, again.output

    # a cell whose machine was lost after its last checkpoint, before its result: resumed from the store
    lost = next(k for k in results if results[k]["cell"]["seed"] == 1)
    log_key = lost.replace("result.json", "run/log.jsonl")
    log_before = held[log_key]
    server.client().delete_object(Bucket=BUCKET, Key=lost)
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "machine-c"))
    resumed = CliRunner().invoke(train_cli, ["sweep", str(spec), "--out", url, "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    back = json.loads(server.keys(lost)[lost])
    assert back["score"] == scores[1] and back["steps"] == 60  # the same run, from its checkpoint
    assert back["resumed_from"] == 60 and results[lost]["resumed_from"] == 0  # which the result says
    assert server.keys(log_key)[log_key] == log_before  # resumed, not trained again


def test_a_cells_checkpoints_reach_the_store_while_it_trains(env, tmp_path, monkeypatch):
    from omgmg.experiments import store
    from omgmg.experiments.spec import load_spec
    from omgmg.experiments.sweep import run_sweep

    root, server = env
    monkeypatch.setattr(store, "MIRROR_EVERY", 0.05)
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    spec = load_spec(_sweep_spec(root / "c.zarr", tmp_path, steps=1500, every=100))
    mid_run = []

    def look(running):
        keys = server.keys("sweeps/two/")
        checkpoints = [k for k in keys if k.endswith("latest.pt")]
        results = [k for k in keys if k.endswith("result.json")]
        mid_run.append(bool(checkpoints) and not results)

    run_sweep(spec, f"s3://{BUCKET}/sweeps/two", workers=1, on_note=lambda m: None, on_running=look,
              running_every=0.3, only=["*seed0*"])  # fmt: skip
    assert any(mid_run)  # a checkpoint was in the store before the cell finished


def test_one_machine_trains_a_cell_at_a_time_and_a_lost_machines_lease_runs_out(env, tmp_path, monkeypatch):
    import json
    import time

    from omgmg.experiments import store
    from omgmg.experiments.spec import load_spec
    from omgmg.experiments.sweep import run_sweep

    root, server = env
    monkeypatch.setattr(store.Lease, "SETTLE", 0.05)
    monkeypatch.setattr(store, "LEASE_SECONDS", 1.0)
    cell = f"s3://{BUCKET}/sweeps/lease/cells/x"
    a, b = store.Lease(cell), store.Lease(cell)
    assert a.acquire(wait=0) is None
    assert "pid" in b.acquire(wait=0.1)  # held: b waited, then gave up, naming the holder
    a.release()
    assert b.acquire(wait=0) is None
    lost = store.Lease(cell)  # b's machine is lost: its lease is never renewed
    t0 = time.monotonic()
    assert lost.acquire(wait=5) is None and time.monotonic() - t0 >= 0.5  # taken once b's ran out

    # in a sweep: a cell another machine holds (a lease that does not run out) is left to it
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    spec = load_spec(_sweep_spec(root / "c.zarr", tmp_path))
    busy = next(c for c in spec.cells() if c.seed == 1)
    until = time.time() + 3600
    server.client().put_object(Bucket=BUCKET, Key=f"sweeps/held/cells/{busy.dirname}/lease.json",
                               Body=json.dumps({"holder": "x", "host": "other", "pid": 7, "until": until}))  # fmt: skip
    results = run_sweep(spec, f"s3://{BUCKET}/sweeps/held", workers=1, on_note=lambda m: None)
    by_seed = {r["cell"]["seed"]: r for r in results}
    assert by_seed[0]["score"] is not None and "in use by other (pid 7)" in by_seed[1]["skipped"]
    assert not any(k.endswith("lease.json") and "seed0" in k for k in server.keys("sweeps/held/"))  # let go
