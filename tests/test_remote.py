"""Datasets read straight from a URL: a local HTTP server started by the test serves a dataset folder."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fixture_datasets

from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli
from omgmg.datakit import DatasetError, TransitionLoader, open_dataset, validate
from omgmg.datakit.download import download


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(root folder, base URL): everything under root is served read-only over HTTP."""
    root = tmp_path_factory.mktemp("served")
    fixture_datasets(root, continuous=8, discrete=6)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_url_reads_like_the_folder_and_is_never_written(served):
    root, base = served
    before = _files(root)
    for name in ("c.zarr", "d.zarr"):
        local, remote = open_dataset(root / name), open_dataset(f"{base}/{name}")
        assert remote.path == f"{base}/{name}" and remote.path.name == name
        assert remote.content_sha256() == local.content_sha256() and validate(f"{base}/{name}") == []
        for streaming in (False, True):
            kw = {"streaming": True, "block_rows": 64, "resident_blocks": 2} if streaming else {}
            a = TransitionLoader(local, 32, seed=3, **kw).sample()
            b = TransitionLoader(remote, 32, seed=3, **kw).sample()
            assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()) if x is not None)
    assert _files(root) == before  # read-only: nothing was written to the served store


def test_commands_take_urls(served, tmp_path):
    root, base = served
    runner = CliRunner()
    shown = runner.invoke(data_cli, ["inspect", f"{base}/c.zarr", "--json"])
    assert shown.exit_code == 0 and '"joint_saco"' in shown.output
    assert runner.invoke(data_cli, ["validate", f"{base}/d.zarr"]).exit_code == 0
    trained = runner.invoke(
        train_cli,
        ["train", "--dataset", f"{base}/c.zarr", "--algo", "bc", "--steps", "10", "--eval-every", "10",
         "--eval-episodes", "1", "--hidden", "16", "--batch-size", "16", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(train_cli, ["eval", str(tmp_path / "run"), "--episodes", "1"])  # the run's URL
    assert evaluated.exit_code == 0, evaluated.output


def test_bad_urls_are_one_line(served):
    root, base = served
    with pytest.raises(DatasetError, match="is not an omgmg dataset: no zarr.json there"):
        open_dataset(f"{base}/nothing.zarr")
    with pytest.raises(DatasetError, match="did not answer"):
        open_dataset("http://127.0.0.1:9/c.zarr")
    out = CliRunner().invoke(data_cli, ["inspect", "http://127.0.0.1:9/c.zarr"])
    assert out.exit_code == 1 and "did not answer" in out.output and "Traceback" not in out.output


def test_download_checks_every_chunk_and_leaves_nothing_when_one_is_damaged(served, tmp_path):
    root, base = served
    got = download(f"{base}/c.zarr", tmp_path / "got.zarr")
    assert open_dataset(got).content_sha256() == open_dataset(root / "c.zarr").content_sha256()
    with pytest.raises(DatasetError, match="already exists.*overwrite=True"):
        download(f"{base}/c.zarr", got)
    damaged = shutil.copytree(root / "c.zarr", root / "damaged.zarr")
    chunk = next(p for p in sorted((damaged / "steps" / "obs").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[40] ^= 0xFF  # a flipped byte: the file's size is right, its checksum is not
    chunk.write_bytes(bytes(data))
    assert any("checksum" in str(p) for p in validate(f"{base}/damaged.zarr"))
    out = CliRunner().invoke(data_cli, ["download", f"{base}/damaged.zarr", "--out", str(tmp_path / "bad.zarr")])
    assert out.exit_code == 1 and "arrived damaged" in out.output and "checksum" in out.output
    assert not (tmp_path / "bad.zarr").exists() and not list(tmp_path.glob(".bad.zarr*"))
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    refused = CliRunner().invoke(data_cli, ["download", f"{base}/c.zarr", "--out", str(mine), "--force"])
    assert refused.exit_code == 2 and "not an omgmg dataset" in refused.output
    assert (mine / "keep.txt").read_text() == "mine"
    assert np.array_equal(open_dataset(got).read("steps/obs"), open_dataset(root / "c.zarr").read("steps/obs"))


# ----- servers that misbehave (issue 38): every reader, one line, no hang past the timeout ------------------------

FAULTS = ["missing", "500", "cut", "hang"]
SAYS = {
    "missing": "is missing",
    "500": "HTTP 500",
    "cut": "cut short",
    "hang": "no answer within 1 s",
}
READERS = {
    "train": (
        train_cli,
        [
            "train",
            "--dataset",
            "{url}",
            "--algo",
            "bc",
            "--steps",
            "10",
            "--no-eval",
            "--hidden",
            "8",
            "--out",
            "{tmp}/run",
        ],
    ),  # fmt: skip
    "validate": (data_cli, ["validate", "{url}"]),
    "export": (data_cli, ["export", "{url}", "--format", "omiga", "--out", "{tmp}/x.hdf5"]),
    "compare": (data_cli, ["compare", "{url}", "{local}"]),
    "download": (data_cli, ["download", "{url}", "--out", "{tmp}/dl.zarr"]),
    "batch": (train_cli, ["batch", "{url}"]),
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    from faulty_http import FaultyServer

    root = tmp_path_factory.mktemp("faulty")
    fixture_datasets(root, continuous=8, discrete=6)
    with FaultyServer(root) as server:
        yield root, server


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("reader", list(READERS))
def test_a_server_that_misbehaves_is_one_line_in_every_reader_and_leaves_nothing(faulty, tmp_path, monkeypatch,
                                                                                  reader, fault):  # fmt: skip
    import time

    root, server = faulty
    monkeypatch.setenv("OMGMG_REMOTE_TIMEOUT", "1")
    monkeypatch.setenv("OMGMG_REMOTE_RETRIES", "1")
    server.faults.clear()
    server.faults["c.zarr/steps/obs/c/0/0/0"] = fault  # the first chunk of the observations
    cli, args = READERS[reader]
    argv = [a.format(url=f"{server.url}/c.zarr", tmp=tmp_path, local=root / "d.zarr") for a in args]
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, argv)
    assert time.monotonic() - t0 < 30  # a silent server costs the timeout per try, never minutes
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert SAYS[fault] in result.output and "steps/obs" in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # no run folder, no partial download or export, no lock file


def test_transient_failures_are_retried_and_a_healed_server_is_read_in_full(faulty, monkeypatch):
    from omgmg.datakit import remote

    root, server = faulty
    monkeypatch.setattr(remote, "FIRST_PAUSE", 0.01)
    server.faults.clear()
    key = "c.zarr/steps/obs/c/0/0/0"
    server.faults[key] = "500*2"  # answers 500 twice, then the file: within the 3 retries
    server.requests[key] = before = 0
    local, remote_ds = open_dataset(root / "c.zarr"), open_dataset(f"{server.url}/c.zarr")
    assert np.array_equal(remote_ds.read("steps/obs"), local.read("steps/obs"))
    assert server.requests[key] - before == 3
    server.faults[key] = "cut*1"
    server.requests[key] = 0
    assert np.array_equal(open_dataset(f"{server.url}/c.zarr").read("steps/obs"), local.read("steps/obs"))


def test_a_sweep_trains_on_a_dataset_given_by_url(served, tmp_path):
    from omgmg.experiments.spec import parse_spec
    from omgmg.experiments.sweep import run_sweep

    root, base = served
    budget = {"steps": 20, "eval_every": 20, "eval_episodes": 1}
    raw = {"name": "url", "algorithms": ["bc"], "seeds": [0], "budget": budget, "smoke": {"seeds": [0], **budget}}
    spec = parse_spec(raw | {"datasets": [{"path": f"{base}/c.zarr"}], "overrides": {"bc": {"hidden": 8}}})
    results = run_sweep(spec, tmp_path / "sw", workers=1, on_note=lambda m: None)
    assert len(results) == 1 and not results[0].get("error") and results[0]["dataset_path"] == f"{base}/c.zarr"
