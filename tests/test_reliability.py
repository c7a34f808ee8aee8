"""Nothing lost, nothing mixed, nothing silently corrupt: each case made the way a user would meet it
(a kill at a chosen point through a hook, two processes on one output, a damaged byte in a real
store, a full disk through a patched write), and each answered with one line and intact files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import zarr
from click.testing import CliRunner
from conftest import bc_sweep_toml, continuous_spec, crash, hand_episodes, write

from omgmg.algos.bc import BCConfig
from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli
from omgmg.collectors.collect import CollectRequest, collect
from omgmg.collectors.envs import resolve
from omgmg.collectors.fixtures import make_fixture
from omgmg.collectors.happo import HAPPOConfig
from omgmg.collectors.runs import RunDir
from omgmg.collectors.training import train_behaviour
from omgmg.datakit import DatasetWriter, iter_episodes, open_dataset, validate
from omgmg.datakit.checkpoints import load_checkpoint, previous_path, save_checkpoint
from omgmg.datakit.dataset import partial_path
from omgmg.datakit.errors import CheckpointError, DatasetError, InvalidDatasetError, OutputError, RequestError
from omgmg.datakit.format import array_layout, identity_sha256
from omgmg.datakit.integrity import chunk_files
from omgmg.datakit.outputs import OutputLock, is_omgmg_run
from omgmg.experiments.spec import parse_spec
from omgmg.experiments.sweep import pending_cells, run_sweep
from omgmg.rundir import read_log
from omgmg.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def run(cli, *args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:
        assert isinstance(result.exception, SystemExit), result.exception  # a message, never a traceback
        assert "Traceback" not in result.output
    return result


def same_arrays(a, b) -> bool:
    return all(np.array_equal(a.read(k.key), b.read(k.key)) for k in array_layout(a.spec))


class Stop(Exception):
    """The test's kill: raised from a progress hook at a chosen point."""


def stop_after(n: int):
    def hook(done, total):
        if done >= n:
            raise Stop

    return hook


def fixture_request(tmp_path, **kw) -> CollectRequest:
    base = dict(
        suite="fixture",
        task="continuous",
        level="medium",
        episodes=40,
        train_steps=1000,
        workers=1,
        num_envs=4,
        out=tmp_path / "d.zarr",
    )
    base.update(kw)
    return CollectRequest(**base)


@pytest.fixture
def quiet():
    return lambda message: None


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """Behaviour runs of this module live in its own OMGMG_HOME, shared by its tests (as by a user's
    commands: a run trained once serves every collection that asks for it)."""
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMGMG_HOME", str(path))
        yield path


# ----- 1. resume only the same request -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_partial_collection_is_resumed_only_by_the_same_request(tmp_path, quiet):
    with pytest.raises(Stop):
        collect(fixture_request(tmp_path), on_note=quiet, on_rollout=stop_after(20))
    assert partial_path(tmp_path / "d.zarr").exists() and not (tmp_path / "d.zarr").exists()
    for other, differs in [
        (dict(level="random"), "level"),
        (dict(seed=1), "seed"),
        (dict(episodes=None, transitions=500), "budget"),
    ]:
        with pytest.raises(RequestError, match=f"another request .*{differs}"):
            collect(fixture_request(tmp_path, **other), on_note=quiet)
    resumed = collect(fixture_request(tmp_path), on_note=quiet)
    fresh = collect(fixture_request(tmp_path, out=tmp_path / "fresh.zarr"), on_note=quiet)
    assert same_arrays(resumed, fresh)
    assert resumed.meta["collection"]["request"]["level"] == "medium"


@pytest.mark.slow
def test_force_starts_a_collection_over_instead_of_resuming(tmp_path, quiet):
    with pytest.raises(Stop):
        collect(fixture_request(tmp_path), on_note=quiet, on_rollout=stop_after(20))
    random = collect(fixture_request(tmp_path, level="random", force=True), on_note=quiet)
    assert random.level == "random" and random.meta["behaviour_policy"]["algorithm"] == "uniform-random"
    fresh = collect(fixture_request(tmp_path, level="random", out=tmp_path / "fresh.zarr"), on_note=quiet)
    assert same_arrays(random, fresh)  # no medium episode came along


@pytest.mark.slow
def test_a_kill_between_the_final_metadata_and_the_rename_completes_on_the_next_run(tmp_path, quiet, monkeypatch):
    import omgmg.datakit.writer as writer_module

    real = writer_module._replace_atomically

    def killed(*args, **kw):
        raise Stop

    monkeypatch.setattr(writer_module, "_replace_atomically", killed)
    with pytest.raises(Stop):
        collect(fixture_request(tmp_path), on_note=quiet)
    monkeypatch.setattr(writer_module, "_replace_atomically", real)
    notes = []
    done = collect(fixture_request(tmp_path), on_note=notes.append)
    assert any("moved it into place" in n for n in notes)
    assert validate(done.path) == [] and not partial_path(done.path).exists()
    fresh = collect(fixture_request(tmp_path, out=tmp_path / "fresh.zarr"), on_note=quiet)
    assert same_arrays(done, fresh)
    monkeypatch.setattr(writer_module, "_replace_atomically", killed)  # once more, then another request
    with pytest.raises(Stop):
        collect(fixture_request(tmp_path, out=tmp_path / "e.zarr"), on_note=quiet)
    with pytest.raises(RequestError, match="finished write for another request"):
        collect(fixture_request(tmp_path, out=tmp_path / "e.zarr", seed=3), on_note=quiet)


@pytest.mark.slow
def test_a_shorter_behaviour_budget_never_uses_a_longer_runs_checkpoints(tmp_path):
    ref = resolve("fixture/continuous")
    small = dict(num_envs=4, rollout_len=25, eval_every=1000)
    long_run = train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=2000, **small), home=tmp_path)
    shorter = train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=1000, **small), home=tmp_path)
    assert shorter.root == long_run.root  # whole segments: one run, the shorter budget is a prefix
    assert [e["env_steps"] for e in shorter.evaluations(up_to=1000)] == [0, 1000]
    inside = train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=1500, **small), home=tmp_path)
    assert inside.root != long_run.root  # its last segment is cut short: a run of its own
    assert inside.evaluations()[-1]["env_steps"] == 1500


# ----- 2. one writer per output ----------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import continuous_spec
    from omgmg.datakit import DatasetWriter
    w = DatasetWriter({target!r}, continuous_spec())
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_one_releases_the_output(tmp_path):
    target = tmp_path / "x.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(tests=str(ROOT / "tests"), target=str(target))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(OutputError, match=rf"in use by another omgmg process \(pid {proc.pid} "):
            DatasetWriter(target, continuous_spec())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    w = DatasetWriter(target, continuous_spec())  # the OS released the dead holder's lock
    w.add_episode(**hand_episodes(continuous_spec(), [3], ["truncated"])[0])
    assert w.close().n_episodes == 1


def test_two_trainings_into_one_run_directory_are_refused(tmp_path):
    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=8)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)  # as a starting run leaves it before its config.json exists
    with OutputLock(out, "run directory"):
        with pytest.raises(OutputError, match="run directory .* is in use"):
            train("bc", ds, BCConfig(steps=5, eval_every=5, eval_episodes=1, hidden=8), out, evaluate=False)
    assert not (out / "log.jsonl").exists()


def test_a_run_interrupted_before_it_wrote_its_config_starts_again(tmp_path, monkeypatch):
    """A run killed while it opened its dataset or built its networks (minutes on 1M transitions) left a folder
    that was then refused as foreign: a sweep cell stayed failed for good. Now no folder is made before the data
    is read, and an empty one left by an earlier version starts again."""
    import omgmg.trainer as trainer

    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=8)
    cfg = BCConfig(steps=5, eval_every=5, eval_episodes=1, hidden=8)
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer, "build", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train("bc", ds, cfg, out, evaluate=False)
    assert not out.exists() and not list(tmp_path.glob(".run.lock"))  # nothing left behind
    out.mkdir()  # an empty folder, as an earlier version left it
    assert is_omgmg_run(train("bc", ds, cfg, out, evaluate=False).run_dir)

    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)  # what earlier versions left at that point
    assert is_omgmg_run(train("bc", ds, cfg, legacy, evaluate=False).run_dir)
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "checkpoints" / "mine.pt").write_bytes(b"not omgmg's")
    with pytest.raises(RequestError, match="not an omgmg run directory"):
        train("bc", ds, cfg, foreign, evaluate=False)
    assert (foreign / "checkpoints" / "mine.pt").read_bytes() == b"not omgmg's"


PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys, time
    sys.path.insert(0, {root!r})
    from omgmg.experiments.sweep import _stop_with_sweep

    def child(path):
        open(path, "w").write(str(os.getpid()))
        time.sleep(60)

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        from concurrent.futures import ProcessPoolExecutor
        pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_stop_with_sweep, initargs=(os.getpid(), ctx.Event()))
        pool.submit(child, {pidfile!r})
        time.sleep(60)
""")


@pytest.mark.slow
def test_sweep_workers_end_when_the_sweep_process_is_killed(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(root=str(ROOT), pidfile=str(pidfile)))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        child = int(pidfile.read_text())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while _alive(child):
        assert time.monotonic() < deadline, "the pool worker outlived its sweep"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_terminated_sweep_stops_its_running_cells_at_once_and_resumes_them(tmp_path):
    """SIGTERM to the sweep's process (what `kill` and job schedulers send) ends its pool workers too; it
    used to wait for their cells to finish, an hour at a real budget."""
    ds = make_fixture(tmp_path / "c.zarr", "continuous", episodes=12)
    spec = tmp_path / "long.toml"
    spec.write_text(bc_sweep_toml(ds.path, steps=1_000_000, eval_every=500_000, name="long"))
    cells = parse_spec(tomllib.loads(spec.read_text())).cells()
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "omgmg.cli.train", "sweep", str(spec), "--out", str(out), "--workers", "2",
           "--torch-threads", "1"]  # fmt: skip
    sweep = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not all((out / "cells" / c.dirname / "run" / "checkpoints").is_dir() for c in cells):
            assert time.monotonic() < deadline and sweep.poll() is None, "the cells never started"
            time.sleep(0.2)
        time.sleep(1)
        sweep.send_signal(signal.SIGTERM)
        output, _ = sweep.communicate(timeout=30)  # not the hour its cells would take to finish
    finally:
        sweep.kill()
    assert sweep.returncode == 130 and "interrupted" in output
    for c in cells:  # every worker is gone: its cell's lock is free, and the cell is left to resume
        OutputLock(out / "cells" / c.dirname, "sweep cell").acquire().release()
        assert not (out / "cells" / c.dirname / "result.json").exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ----- 3. corruption is found, never decoded ---------------------------------------------------------------------


def _chunk(ds, key, i=0) -> Path:
    return dict(chunk_files(ds.group, key))[i]


@pytest.fixture
def stored(tmp_path):
    return make_fixture(tmp_path / "s.zarr", "continuous", episodes=30, seed=1)


def test_a_deleted_chunk_is_reported_not_read_as_zeros(stored, tmp_path):
    _chunk(stored, "steps/obs").unlink()
    problems = validate(stored.path)
    assert len(problems) == 1 and "steps/obs chunk 0" in str(problems[0]) and "missing" in str(problems[0])
    with pytest.raises(InvalidDatasetError, match="chunk file is missing"):
        open_dataset(stored.path)
    with pytest.raises(InvalidDatasetError):
        train("bc", stored.path, BCConfig(steps=5, hidden=8), tmp_path / "run", evaluate=False)


def test_flipped_bytes_fail_the_checksum_everywhere(stored):
    path = _chunk(stored, "steps/state")
    data = bytearray(path.read_bytes())
    for k in range(40, 104):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = validate(stored.path)
    assert len(problems) == 1 and "checksum does not match" in str(problems[0])
    ds = open_dataset(stored.path)  # the cheap check sees a whole file ...
    with pytest.raises(DatasetError, match="steps/state .* is damaged"):  # ... and reading it is refused
        ds.read("steps/state")


@pytest.mark.parametrize("args", [("validate",), ("inspect",), ("export", "--format", "omiga", "--out", "x.hdf5")])
def test_a_truncated_chunk_is_one_line_in_every_command(stored, tmp_path, args):
    path = _chunk(stored, "steps/obs")
    path.write_bytes(path.read_bytes()[:100])
    argv = [args[0], stored.path, *args[1:]]
    if "--out" in argv:
        argv[-1] = tmp_path / "x.hdf5"
    result = run(data_cli, *argv, code=1)
    assert "truncated or overwritten" in result.output
    assert not (tmp_path / "x.hdf5").exists()


def test_training_refuses_a_dataset_that_validation_rejects(stored, tmp_path):
    g = zarr.open_group(str(stored.path), mode="r+")
    reward = g["steps/reward"][:]
    reward[7] = np.nan
    g["steps/reward"][:] = reward
    assert any("non-finite reward" in str(p) for p in validate(stored.path))
    with pytest.raises(InvalidDatasetError, match=r"steps/reward\[7\]: non-finite reward"):
        train("bc", stored.path, BCConfig(steps=5, hidden=8), tmp_path / "run", evaluate=False)
    result = run(
        train_cli,
        "train",
        "--dataset",
        stored.path,
        "--algo",
        "bc",
        "--steps",
        5,
        "--no-eval",
        "--out",
        tmp_path / "run2",
        code=1,
    )
    assert "non-finite reward" in result.output


def write_format_1(ds, out: Path) -> None:
    """The same dataset as a format-1 store (what omgmg 0.1.0 wrote: Blosc without checksums)."""
    import zarr.codecs as zc

    g = zarr.open_group(str(out), mode="w", zarr_format=3)
    for a in array_layout(ds.spec):
        src = ds.group[a.key]
        shuffle = zc.BloscShuffle.bitshuffle if a.dtype == np.bool_ else zc.BloscShuffle.shuffle
        g.require_group(a.group).create_array(
            a.name,
            shape=src.shape,
            chunks=src.chunks,
            dtype=a.dtype,
            fill_value=0,
            compressors=zc.BloscCodec(cname="zstd", clevel=1, shuffle=shuffle),
        )[:] = src[:]
    g.attrs.put({**ds.meta, "format_version": 1, "identity_sha256": identity_sha256(ds.spec, 1)})


def test_format_1_is_read_checked_for_truncation_and_upgraded_to_checksums(stored, tmp_path):
    old = tmp_path / "v1.zarr"
    write_format_1(stored, old)
    assert open_dataset(old).format_version == 1 and validate(old) == []
    assert "format 1 stores carry no chunk checksums" in run(data_cli, "validate", old).output
    run(data_cli, "upgrade", old, "--out", tmp_path / "v2.zarr")
    new = open_dataset(tmp_path / "v2.zarr")
    assert new.format_version == 3 and validate(new.path) == [] and same_arrays(new, stored)
    assert new.meta["collection"]["upgraded_from"]["format_version"] == 1
    assert new.content_sha256() == stored.content_sha256()
    path = _chunk(open_dataset(old), "steps/obs")
    path.write_bytes(path.read_bytes()[:-7])
    assert "truncated or overwritten" in str(validate(old)[0])
    result = run(data_cli, "upgrade", old, "--out", tmp_path / "v2b.zarr", code=1)
    assert "steps/obs chunk 0" in result.output and not (tmp_path / "v2b.zarr").exists()


# ----- 4. --force replaces only what omgmg wrote ------------------------------------------------------------------


def test_force_never_deletes_what_omgmg_did_not_write(stored, tmp_path, monkeypatch):
    sub = tmp_path / "work" / "sub"
    sub.mkdir(parents=True)
    (tmp_path / "work" / "notes.txt").write_text("mine")
    monkeypatch.chdir(sub)
    result = run(data_cli, "export", stored.path, "--format", "omiga", "--out", "..", "--force", code=2)
    assert "current directory" in result.output and (tmp_path / "work" / "notes.txt").exists()
    folder = tmp_path / "folder"
    (folder / "deep").mkdir(parents=True)
    result = run(data_cli, "export", stored.path, "--format", "omiga", "--out", folder, "--force", code=2)
    assert "not a file omgmg exported" in result.output and (folder / "deep").is_dir()
    result = run(data_cli, "export", stored.path, "--format", "omiga", "--out", stored.path, "--force", code=2)
    assert "source" in result.output and validate(stored.path) == []
    unrelated = tmp_path / "notadataset"
    unrelated.write_text("precious")
    result = run(data_cli, "fixture", unrelated, "--force", code=2)
    assert "not an omgmg dataset" in result.output and unrelated.read_text() == "precious"
    link = tmp_path / "link.zarr"
    link.symlink_to(stored.path)
    run(data_cli, "fixture", link, "--force", code=2)
    assert validate(stored.path) == []
    # what omgmg wrote it does replace
    run(data_cli, "export", stored.path, "--format", "omiga", "--out", tmp_path / "e.hdf5")
    run(data_cli, "export", stored.path, "--format", "omiga", "--out", tmp_path / "e.hdf5", "--force")
    run(data_cli, "fixture", tmp_path / "f.zarr")
    run(data_cli, "fixture", tmp_path / "f.zarr", "--force", "--episodes", 3)
    assert open_dataset(tmp_path / "f.zarr").n_episodes == 3


def test_collect_force_refuses_a_foreign_folder_before_training(tmp_path, quiet):
    foreign = tmp_path / "mine.zarr"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2,3")
    with pytest.raises(RequestError, match="not an omgmg dataset"):
        collect(fixture_request(tmp_path, out=foreign, force=True), on_note=quiet)
    assert (foreign / "data.csv").read_text() == "1,2,3"


# ----- 5. checkpoints -----------------------------------------------------------------------------------------------


@pytest.mark.checkpoint
def test_a_checkpoint_detects_damage_and_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint({"step": 1, "w": torch.arange(10000.0)}, path, keep_previous=True)
    save_checkpoint({"step": 2, "w": torch.arange(10000.0) * 2}, path, keep_previous=True)
    assert torch.load(path, weights_only=True)["step"] == 2  # a plain weights-only load still works
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 1024] = bytes(1024)  # 1 KB overwritten in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum|cannot be read") as e:
        load_checkpoint(path, fallback=False)
    assert "weights_only" not in str(e.value)
    warnings = []
    assert load_checkpoint(path, warn=warnings.append)["step"] == 1 and "previous" in warnings[0]
    for damaged in (b"", path.read_bytes()[:500]):  # empty, half-written
        path.write_bytes(damaged)
        previous_path(path).write_bytes(damaged)
        with pytest.raises(CheckpointError, match="cannot be read") as e:
            load_checkpoint(path)
        assert "weights_only" not in str(e.value)


def small_bc(**kw) -> BCConfig:
    return BCConfig(**{"hidden": 16, "batch_size": 16, "torch_threads": 1, "eval_episodes": 1, **kw})


@pytest.mark.slow
@pytest.mark.checkpoint
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one_to_the_same_run(tmp_path):
    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=10)
    cfg = small_bc(steps=90, eval_every=30, log_every=20)
    straight = train("bc", ds, cfg, tmp_path / "a", evaluate=False)

    def stop(step, total, ev):
        if ev is not None and step == 60:
            raise Stop

    with pytest.raises(Stop):
        train("bc", ds, cfg, tmp_path / "b", evaluate=False, progress=stop)
    latest = tmp_path / "b" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:300])  # half-written
    warnings = []
    resumed = train("bc", ds, cfg, tmp_path / "b", evaluate=False, warn=warnings.append)
    assert any("previous checkpoint" in w for w in warnings)
    drop = lambda log: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in log]  # noqa: E731
    assert drop(read_log(resumed.run_dir)) == drop(read_log(straight.run_dir))
    result = run(train_cli, "eval", tmp_path / "b", "--checkpoint", "latest", "--episodes", 1)
    assert "return" in result.output
    latest.write_bytes(b"")
    previous_path(latest).write_bytes(b"\x00" * 64)
    result = run(train_cli, "eval", tmp_path / "b", "--checkpoint", "latest", code=1)
    assert "cannot be read" in result.output and "weights_only" not in result.output


@pytest.mark.slow
@pytest.mark.checkpoint
def test_a_damaged_behaviour_checkpoint_is_set_aside_and_the_run_continues_identically(tmp_path):
    ref = resolve("fixture/continuous")
    cfg = HAPPOConfig(total_env_steps=2000, num_envs=4, rollout_len=25, eval_every=1000)

    def stop(steps, total, score):
        if score is not None and steps >= 1000:
            raise Stop

    with pytest.raises(Stop):
        train_behaviour(ref, "happo", cfg, progress=stop, home=tmp_path / "a")
    last = RunDir(ref, "happo", cfg, home=tmp_path / "a").checkpoints()[-1]
    last.write_bytes(last.read_bytes()[:1000])
    warnings = []
    resumed = train_behaviour(ref, "happo", cfg, warn=warnings.append, home=tmp_path / "a")
    assert any("set aside" in w for w in warnings) and last.with_name(last.name + ".damaged").exists()
    straight = train_behaviour(ref, "happo", cfg, home=tmp_path / "b")
    a = torch.load(resumed.checkpoints()[-1], weights_only=True)["weights"]
    b = torch.load(straight.checkpoints()[-1], weights_only=True)["weights"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    log = lambda r: [json.loads(x) for x in (r.root / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(log(resumed)) == strip(log(straight))  # no duplicated lines


def test_a_failed_sweep_cell_is_run_again(tmp_path, monkeypatch, quiet):
    import omgmg.trainer as trainer

    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=8)
    budget = {"steps": 4, "eval_every": 4, "eval_episodes": 1}
    spec = parse_spec(
        {
            "name": "t",
            "algorithms": ["bc"],
            "seeds": [0],
            "budget": budget,
            "datasets": [{"path": str(ds.path), "label": "d"}],
            "smoke": {"seeds": [0], **budget},
            "overrides": {"bc": {"hidden": 8}},
        }
    )
    real = trainer.train

    def damaged(*args, **kw):
        raise CheckpointError("checkpoint latest.pt cannot be read")

    monkeypatch.setattr(trainer, "train", damaged)
    first = run_sweep(spec, tmp_path / "s", workers=1, on_note=quiet)
    assert first[0]["error"].startswith("CheckpointError")
    assert pending_cells(tmp_path / "s", spec.cells()) == spec.cells()
    monkeypatch.setattr(trainer, "train", real)
    second = run_sweep(spec, tmp_path / "s", workers=1, on_note=quiet)
    assert "error" not in second[0] and second[0]["steps"] == 4
    assert pending_cells(tmp_path / "s", spec.cells()) == []


# ----- 6. logs ---------------------------------------------------------------------------------------------------


def test_a_finished_run_started_again_gives_its_result_again(stored, tmp_path):
    # a sweep cell killed after its last checkpoint but before its result.json, or resumed on another machine
    from omgmg.trainer import train

    cfg = BCConfig(steps=60, eval_every=30, eval_episodes=1, hidden=8)
    first = train("bc", stored, cfg, tmp_path / "run")
    again = train("bc", stored, cfg, tmp_path / "run")
    assert again.final == first.final and "eval/return" in again.final and again.best == first.best


@pytest.mark.slow
@pytest.mark.checkpoint
@pytest.mark.parametrize("stop_at, damage", [(60, "torn"), (20, "before-first-checkpoint")])
def test_resumed_logs_equal_uninterrupted_ones_for_any_log_and_eval_period(tmp_path, stop_at, damage):
    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=10)
    cfg = small_bc(steps=100, eval_every=30, log_every=20)  # evaluation periods that are not log periods
    straight = train("bc", ds, cfg, tmp_path / "a", evaluate=False)

    def stop(step, total, ev):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train("bc", ds, cfg, tmp_path / "b", evaluate=False, progress=stop)
    if damage == "torn":
        with open(tmp_path / "b" / "log.jsonl", "a") as f:
            f.write('{"step": 70, "loss/act')  # a write cut by a crash or a full disk
    warnings = []
    resumed = train("bc", ds, cfg, tmp_path / "b", evaluate=False, warn=warnings.append)
    assert (damage != "torn") or any("torn last line" in w for w in warnings)
    drop = lambda log: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in log]  # noqa: E731
    assert drop(read_log(resumed.run_dir)) == drop(read_log(straight.run_dir))


# ----- 7. a full disk, an unwritable place ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_during_collection_is_one_line_and_the_write_resumes(tmp_path, quiet, monkeypatch):
    import omgmg.datakit.writer as writer_module

    real = writer_module.DatasetWriter._append
    calls = {"n": 0}

    def append(self, blocks, state):
        calls["n"] += self.path.name == "d.zarr"  # the dataset's appends, not the behaviour run's replay
        if calls["n"] == 3 and self.path.name == "d.zarr":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, blocks, state)

    monkeypatch.setattr(writer_module.DatasetWriter, "_append", append)
    req = fixture_request(tmp_path, episodes=60)
    with pytest.raises(OutputError, match=r"no space left on the device of .*d\.zarr\.partial .* free\)"):
        collect(req, on_note=quiet)
    monkeypatch.setattr(writer_module.DatasetWriter, "_append", real)  # space was freed
    resumed = collect(req, on_note=quiet)
    fresh = collect(fixture_request(tmp_path, episodes=60, out=tmp_path / "fresh.zarr"), on_note=quiet)
    assert same_arrays(resumed, fresh)


def test_export_checks_the_space_it_needs_first_and_leaves_nothing(stored, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    result = run(data_cli, "export", stored.path, "--format", "omiga", "--out", tmp_path / "x.hdf5", code=1)
    assert "needs about" in result.output and "1000 B free" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch):
    import omgmg.datakit.outputs as outputs

    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=6)
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", full)
    result = run(
        train_cli,
        "train",
        "--dataset",
        ds.path,
        "--algo",
        "bc",
        "--steps",
        10,
        "--eval-every",
        10,
        "--no-eval",
        "--hidden",
        8,
        "--out",
        tmp_path / "run",
        code=1,
    )
    assert "no space left on the device of" in result.output
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize(
    "cli, args",
    [
        (data_cli, ["fixture", "{blocker}/x.zarr"]),
        (
            data_cli,
            ["collect", "fixture", "continuous", "--level", "random", "--episodes", "2", "--out", "{blocker}/x.zarr"],
        ),
        (data_cli, ["export", "{data}", "--format", "omiga", "--out", "{blocker}/x.hdf5"]),
        (data_cli, ["inspect", "{data}", "--plot", "{blocker}/x.png"]),
        (
            train_cli,
            ["train", "--dataset", "{data}", "--algo", "bc", "--steps", "2", "--no-eval", "--out", "{blocker}/run"],
        ),
    ],
)
def test_an_output_under_a_regular_file_is_one_line(stored, tmp_path, cli, args):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    argv = [a.format(blocker=blocker, data=stored.path) for a in args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "Traceback" not in result.output and "not a folder" in result.output


# ----- 8. bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "nan"),
        ("--nu", "nan"),
        ("--grad-norm-clip", "-1"),
        ("--z-clip", "-1"),
        ("--n-action-samples", "0"),
        ("--lr", "inf"),
    ],
)
def test_non_finite_or_out_of_range_hyperparameters_are_usage_errors(stored, tmp_path, option, value):
    result = run(
        train_cli,
        "train",
        "--dataset",
        stored.path,
        "--steps",
        2,
        "--no-eval",
        option,
        value,
        "--out",
        tmp_path / "run",
        code=2,
    )
    assert option.lstrip("-").replace("-", "_") in result.output
    assert not (tmp_path / "run").exists()


def test_the_same_mistake_gets_the_same_exit_code_in_every_command(stored, tmp_path):
    from test_omiga import omiga_file

    h5 = tmp_path / "o.hdf5"
    omiga_file(h5, [5, 5])
    run(data_cli, "collect", "fixture", "continuous", "--level", "bogus", code=2)
    run(
        data_cli,
        "import",
        "omiga",
        h5,
        "--task",
        "Hopper-3x1",
        "--level",
        "bogus",
        "--out",
        tmp_path / "i.zarr",
        code=2,
    )
    for argv, says in (
        (["collect", "fixture", "continuous", "--level", "random", "--out", stored.path], "exists"),
        (["fixture", stored.path], "exists"),
        (["upgrade", stored.path, "--out", tmp_path / "u.zarr"], "already format 3"),
    ):
        assert says in run(data_cli, *argv, code=2).output
    (tmp_path / "e.hdf5").write_text("")
    run(data_cli, "export", stored.path, "--format", "omiga", "--out", tmp_path / "e.hdf5", code=2)


def test_an_hdf5_whose_o_is_a_group_is_refused_with_a_line(tmp_path):
    import h5py

    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("o")
        for k in ("s", "a", "r", "d"):
            f.create_dataset(k, data=np.zeros((4, 1)))
    result = run(
        data_cli,
        "import",
        "omiga",
        tmp_path / "bad.hdf5",
        "--task",
        "Hopper-3x1",
        "--level",
        "medium",
        "--out",
        tmp_path / "x.zarr",
        code=1,
    )
    assert "'o' must be arrays" in result.output and not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_eval_refuses_a_dataset_of_another_task_and_finds_its_dataset_from_anywhere(tmp_path, monkeypatch):
    make_fixture(tmp_path / "a.zarr", "continuous", episodes=6)
    b = make_fixture(tmp_path / "b.zarr", "hopper-3x1", episodes=2, max_episode_len=20)
    monkeypatch.chdir(tmp_path)
    run(
        train_cli,
        "train",
        "--dataset",
        "a.zarr",
        "--algo",
        "bc",
        "--steps",
        4,
        "--eval-every",
        4,
        "--eval-episodes",
        1,
        "--hidden",
        8,
        "--out",
        "run",
    )
    result = run(train_cli, "eval", "run", "--dataset", b.path, "--episodes", 1, code=2)
    assert "trained on fixture/continuous" in result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "return" in run(train_cli, "eval", tmp_path / "run", "--episodes", 1).output
    # named relative to the run directory: found from any working directory, and not this machine's path
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "../a.zarr"


@pytest.mark.parametrize("make", ["folder", "binary"])
def test_a_sweep_spec_that_is_not_text_is_a_usage_error(tmp_path, make):
    spec = tmp_path / "spec.toml"
    if make == "folder":
        spec.mkdir()
    else:
        spec.write_bytes(b"\xff\xfe\x00garbage")
    result = run(train_cli, "sweep", spec, "--out", tmp_path / "s", code=2)
    assert "folder" in result.output or "UTF-8" in result.output


def test_inspect_of_a_damaged_store_is_refused(stored):
    _chunk(stored, "episodes/return").unlink()
    assert "episodes/return chunk 0" in run(data_cli, "inspect", stored.path, code=1).output


def test_a_crashed_writer_resumes_only_its_own_partial_and_refuses_unknown_folders(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [3, 4], ["truncated"] * 2)
    w = DatasetWriter(tmp_path / "x.zarr", spec, request={"seed": 0})
    w.add_episode(**eps[0])
    w.sync()
    crash(w)
    with pytest.raises(RequestError, match=r"seed: 0 \(unfinished\) vs 1 \(now\)"):
        DatasetWriter(tmp_path / "x.zarr", spec, request={"seed": 1})
    w = DatasetWriter(tmp_path / "x.zarr", spec, request={"seed": 0})
    assert w.n_episodes == 1
    w.add_episode(**eps[1])
    assert w.close().n_episodes == 2
    partial_path(tmp_path / "y.zarr").mkdir()
    (partial_path(tmp_path / "y.zarr") / "keep.txt").write_text("not ours")
    with pytest.raises(RequestError, match="not an unfinished omgmg write"):
        DatasetWriter(tmp_path / "y.zarr", spec, resume=False)
    assert (partial_path(tmp_path / "y.zarr") / "keep.txt").exists()
    write(tmp_path / "z.zarr", spec, eps)
    assert len(list(iter_episodes(open_dataset(tmp_path / "z.zarr")))) == 2


# ----- the last bad inputs (issue 38) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cli, args, message",
    [
        (data_cli, ["collect", "mamujoco", "Hopper-3x1", "--transitions", "100"], "Missing option '--level'"),
        (train_cli, ["train", "--dataset", "{d}", "--device", "mps"], "has no MPS device"),
        (train_cli, ["train", "--dataset", "{d}", "--device", "meta"], "a meta device cannot train"),
        (train_cli, ["train", "--dataset", "{d}", "--seeds", "0-99999999999"], "at most 1000 seeds"),
        (train_cli, ["train", "--dataset", "{d}", "--seeds", ""], "give seeds as a range"),
        (train_cli, ["train", "--dataset", "{d}", "--seeds", "0-"], "give seeds as a range"),
        (
            train_cli,
            ["train", "--dataset", "{d}", "--seeds", "0-1", "--grid", "lam=0", "--grid", "lam=1"],
            "lam is given twice",
        ),  # fmt: skip
        (data_cli, ["verify", "{d}", "--atol", "nan"], "--atol must be a number, not nan"),
        (data_cli, ["verify", "{d}", "--episodes", "some"], "give a number of episodes, or all"),
    ],
)
def test_the_last_bad_inputs_are_one_line_and_touch_nothing(stored, tmp_path, monkeypatch, cli, args, message):
    monkeypatch.chdir(tmp_path)
    result = run(cli, *[a.format(d=stored.path) for a in args], code=2)
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "runs").exists()  # no run folder for a refused run


def test_export_refuses_what_validate_rejects_and_writes_nothing(stored, tmp_path):
    g = zarr.open_group(str(stored.path), mode="r+")
    obs, actions = g["steps/obs"][:], g["steps/actions"][:]
    obs[5, 0, 0], actions[7, 1, 0] = np.nan, 50.0
    g["steps/obs"][:], g["steps/actions"][:] = obs, actions
    lines = {str(p) for p in validate(stored.path)}
    for fmt_, out in (("omiga", tmp_path / "x.hdf5"), ("og-marl", tmp_path / "x.vlt")):
        result = run(data_cli, "export", stored.path, "--format", fmt_, "--out", out, code=1)
        assert all(line in result.output for line in lines), result.output  # the lines validate gives
        assert not out.exists() and not list(tmp_path.glob(".x*"))


@pytest.mark.parametrize(
    "args",
    [["validate"], ["inspect"], ["batch"], ["export", "--format", "omiga", "--out", "{tmp}/x.hdf5"],
     ["upgrade", "--out", "{tmp}/u.zarr"], ["train", "--algo", "bc", "--steps", "5", "--no-eval", "--out", "{tmp}/r"]],
    ids=lambda a: a[0],
)  # fmt: skip
def test_a_format_1_chunk_altered_in_place_is_one_line_in_every_command(stored, tmp_path, args):
    old = tmp_path / "v1.zarr"
    write_format_1(stored, old)
    chunk = _chunk(open_dataset(old), "steps/obs")
    data = bytearray(chunk.read_bytes())
    for i in range(40, len(data) - 10):  # same size, other bytes: format 1 has no checksum to catch it
        data[i] = (data[i] * 7 + 3) % 256
    chunk.write_bytes(bytes(data))
    cli = train_cli if args[0] in ("batch", "train") else data_cli
    argv = [args[0], *(["--dataset", old] if args[0] == "train" else [old]), *args[1:]]
    result = run(cli, *[str(a).format(tmp=tmp_path) for a in argv], code=1)
    assert "steps/obs" in result.output and "cannot be decoded" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "v1.zarr"]  # nothing written beside them


def test_a_dataset_a_training_reads_is_not_replaced_under_it(stored, tmp_path):
    from omgmg.datakit.outputs import ReadLock

    with ReadLock(stored.path):  # what `omgmg train` holds on its dataset while it runs
        result = run(data_cli, "fixture", stored.path, "--episodes", 3, "--force", code=1)
        assert "read by a running omgmg command" in result.output
    assert open_dataset(stored.path).n_episodes == 30
    run(data_cli, "fixture", stored.path, "--episodes", 3, "--force")  # the reader is gone: replaced
    assert not list(tmp_path.glob(".s.zarr.lock"))


def test_a_sweep_on_a_device_this_machine_lacks_is_refused_and_failed_cells_are_not_diverged(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make_fixture(tmp_path / "d.zarr", "continuous", episodes=10)
    (tmp_path / "spec.toml").write_text(bc_sweep_toml(tmp_path / "d.zarr", steps=10, eval_every=10))
    result = run(train_cli, "sweep", tmp_path / "spec.toml", "--out", tmp_path / "sw", "--device", "cuda", code=2)
    assert "no CUDA device" in result.output and not (tmp_path / "sw" / "cells").exists()
    from omgmg.experiments.report import _fmt

    failed = {"n": 2, "errors": ["RuntimeError: boom", "RuntimeError: boom"], "diverged": 0}
    assert _fmt(failed, 2) == "failed (2 of 2)"
