"""A sweep on a real Ray cluster of two nodes that share nothing but an object store (moto's S3 server on
127.0.0.1): a head and a worker started with ``ray start``, each with its own temp folder and ``$OMGMG_HOME``,
and the driver in a third. The worker node is killed while it trains a cell; Ray retries the cell on the head,
which resumes it from the checkpoint the worker put in the store, and the sweep's scores equal the local
backend's."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import fixture_datasets
from s3_server import BUCKET, S3Server, free_port

pytest.importorskip("ray", reason="Ray is not installed (pip install 'omgmg[ray]')")
pytest.importorskip("s3fs")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="finds each node's processes in /proc (Linux)"),
]

STEPS = 1000


def _spec(tmp_path: Path, data_url: str) -> Path:
    spec = tmp_path / "cluster.toml"
    spec.write_text(
        f'name = "cluster"\nalgorithms = ["bc"]\nseeds = [0, 1]\n[budget]\nsteps = {STEPS}\neval_every = 250\n'
        f'eval_episodes = 1\n[[datasets]]\npath = "{data_url}"\n[overrides.bc]\nhidden = 8\n'
        f"[smoke]\nseeds = [0]\nsteps = 10\neval_every = 10\neval_episodes = 1\n"
    )
    return spec


def _ray(args: list[str], env: dict) -> None:
    ray = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _processes_under(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder``: one Ray node's raylet, GCS and helpers."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return seen


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_two_node_cluster_sweeps_through_the_store_and_a_lost_nodes_cell_resumes_on_the_other(tmp_path):
    with S3Server() as server:
        fixture_datasets(tmp_path, continuous=8, discrete=2)
        server.put(tmp_path / "c.zarr", "data/c.zarr")
        spec = _spec(tmp_path, f"s3://{BUCKET}/data/c.zarr")
        base = {**os.environ, **server.env, "OMGMG_LEASE_SECONDS": "2", "RAY_USAGE_STATS_ENABLED": "0",
                # Ray 2.5x+ starts a head with token authentication; the nodes and the driver share this one
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # fmt: skip
        omgmg = [str(Path(sys.executable).with_name("omgmg")), "sweep", str(spec), "--torch-threads", "1"]

        # the local backend's scores, on this machine alone (while the cluster starts)
        local = subprocess.Popen([*omgmg, "--out", str(tmp_path / "local"), "--workers", "1"],
                                 env={**base, "OMGMG_HOME": str(tmp_path / "home-local")},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

        port = free_port()
        # Ray's sockets live under its temp folder, whose path must stay short (AF_UNIX: 107 bytes)
        head_tmp, worker_tmp = Path(tempfile.mkdtemp(prefix="omgmg-ray-")), Path(tempfile.mkdtemp(prefix="omgmg-ray-"))
        try:
            _ray(["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                  "--include-dashboard", "false", "--temp-dir", str(head_tmp), "--disable-usage-stats"],
                 {**base, "OMGMG_HOME": str(tmp_path / "home-head")})  # fmt: skip
            _ray(["start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                  "--temp-dir", str(worker_tmp), "--disable-usage-stats"],
                 {**base, "OMGMG_HOME": str(tmp_path / "home-worker")})  # fmt: skip
            local_output, _ = local.communicate(timeout=300)
            assert local.returncode == 0, local_output
            expected = {r["cell"]["seed"]: r["score"] for r in map(json.loads, map(Path.read_text,
                        (tmp_path / "local").glob("cells/*/result.json")))}  # fmt: skip
            assert len(expected) == 2
            url = f"s3://{BUCKET}/sweeps/cluster"
            driver = subprocess.Popen(
                [*omgmg, "--out", url, "--backend", "ray", "--address", f"127.0.0.1:{port}"],
                env={**base, "OMGMG_HOME": str(tmp_path / "home-driver")},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            worker_node = set(_processes_under(worker_tmp))
            killed = None
            deadline = time.monotonic() + 240
            while killed is None and driver.poll() is None and time.monotonic() < deadline:
                names = set(server.names("sweeps/cluster/cells/"))
                for key in (k for k in names if k.endswith("/lease.json")):
                    cell = key.rsplit("/", 1)[0]
                    if f"{cell}/run/checkpoints/latest.pt" not in names or f"{cell}/result.json" in names:
                        continue
                    try:
                        pid = json.loads(server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())["pid"]
                    except server.client().exceptions.NoSuchKey:  # let go in between
                        continue
                    if _ancestors(pid) & worker_node:  # trained under the worker node's raylet: kill that node
                        killed = cell
                        _kill(_processes_under(worker_tmp) + [pid])
                        break
                time.sleep(0.2)
            output, _ = driver.communicate(timeout=300)
        finally:
            local.kill()
            _kill(_processes_under(worker_tmp) + _processes_under(head_tmp))
            shutil.rmtree(head_tmp, ignore_errors=True)
            shutil.rmtree(worker_tmp, ignore_errors=True)
        assert killed is not None, "the worker node never held a cell with a checkpoint in the store:\n" + output
        assert driver.returncode == 0, output
        held = server.keys("sweeps/cluster/")
        results = {k: json.loads(v) for k, v in held.items() if k.endswith("/result.json")}
        assert {r["cell"]["seed"]: r["score"] for r in results.values()} == expected  # the same numbers
        resumed = results[f"{killed}/result.json"]
        assert resumed["steps"] == STEPS and 0 < resumed["resumed_from"] < STEPS  # from the worker's checkpoint
        assert resumed["resumed_from"] % 250 == 0  # a checkpoint step (one per evaluation)
        log = [json.loads(line) for line in held[f"{killed}/run/log.jsonl"].decode().splitlines()]
        for kind in ("eval/return", "loss/actor"):  # evaluations and metric lines: each step once, in order
            steps = [r["step"] for r in log if kind in r]
            assert steps == sorted(set(steps)) and steps[-1] == STEPS, (kind, steps)
        assert len({r["node"] for r in results.values()}) == 1  # both finished on the head: the worker was lost
        assert not any(k.endswith("lease.json") for k in held)  # every lease let go
