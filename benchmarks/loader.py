"""Loader throughput: sampled transitions per second, in memory and streaming.

    python benchmarks/loader.py                       # 1M transitions per shape, batch 256
    python benchmarks/loader.py --transitions 100000  # quicker
    python benchmarks/loader.py --http                # also over a local HTTP server (omgmg.datakit.remote)

Datasets shaped like gymnasium-robotics' HalfCheetah-6x1 (6 agents, obs 9/9/8/9/9/8, state 17,
action 1) and Ant-2x4 (2 agents, obs 63, state 105, action 4) are written once into --workdir
(episodes of 1000 steps, random values) and reused on later runs. Also reported: write speed, open
time, and how many batches the loader supplies in the time of one training step of the official
OMIGA code on the same shape (95 steps/s HalfCheetah-6x1, 185 Ant-2x4, measured on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.collectors.fixtures import fixture_spec  # noqa: E402
from omgmg.datakit import DatasetWriter, TransitionLoader, open_dataset  # noqa: E402

SHAPES = {"HalfCheetah-6x1": "halfcheetah-6x1", "Ant-2x4": "ant-2x4"}
OMIGA_STEPS_PER_S = {"HalfCheetah-6x1": 95, "Ant-2x4": 185}  # official OMIGA code on this machine (issue 5)


def make_dataset(path: Path, shape: str, transitions: int, seed: int = 0) -> float:
    """Write random data of the given shape; returns seconds taken."""
    spec = fixture_spec(shape)
    rng = np.random.default_rng(seed)
    N, O, S, A = spec.n_agents, spec.obs_dim, spec.state_dim, spec.action_dim
    pad = np.arange(O)[None, :] < np.asarray(spec.obs_dims)[:, None]  # (N, O)
    t0 = time.perf_counter()
    with DatasetWriter(path, spec, level="medium", collection={"generator": "benchmarks/loader.py"}) as w:
        left = transitions
        while left > 0:
            L = min(1000, left)
            w.add_episode(
                obs=rng.standard_normal((L, N, O), np.float32) * pad,
                state=rng.standard_normal((L, S), np.float32),
                actions=rng.uniform(-1, 1, (L, N, A)).astype(np.float32),
                reward=rng.standard_normal(L, np.float32),
                final_obs=rng.standard_normal((N, O), np.float32) * pad,
                final_state=rng.standard_normal(S, np.float32),
                terminated=False,
                truncated=True,
            )
            left -= L
    return time.perf_counter() - t0


def throughput(loader: TransitionLoader, batches: int) -> float:
    for _ in range(20):  # warm-up
        loader.sample()
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.sample()
    return batches * loader.batch_size / (time.perf_counter() - t0)


def over_http(folder: Path, name: str, batch_size: int, batches: int) -> dict:
    """The same dataset read through a local HTTP server: open time, in-memory load time and streaming
    transitions/s (the server runs in this process, on the same 2 cores)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
    try:
        t0 = time.perf_counter()
        ds = open_dataset(url)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        TransitionLoader(ds, batch_size=batch_size, seed=0)
        load_s = time.perf_counter() - t0
        stream_tps = throughput(TransitionLoader(ds, batch_size=batch_size, seed=0, streaming=True), batches)
    finally:
        server.shutdown()
    return {
        "http_open_ms": open_s * 1e3,
        "http_in_memory_load_s": load_s,
        "http_streaming_transitions_per_s": stream_tps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transitions", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=4000)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "omgmg-bench")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--http", action="store_true", help="also read each dataset through a local HTTP server")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)

    results = []
    for task, shape in SHAPES.items():
        path = args.workdir / f"{shape}-{args.transitions}.zarr"
        write_s = None
        if not path.exists():
            write_s = make_dataset(path, shape, args.transitions)
        t0 = time.perf_counter()
        ds = open_dataset(path)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mem = TransitionLoader(ds, batch_size=args.batch_size, seed=0)
        load_s = time.perf_counter() - t0
        mem_tps = throughput(mem, args.batches)
        stream = TransitionLoader(ds, batch_size=args.batch_size, seed=0, streaming=True)
        stream_tps = throughput(stream, args.batches)
        resident = stream.resident_transitions
        row = {
            "task_shape": task,
            "transitions": ds.n_transitions,
            "batch_size": args.batch_size,
            "write_transitions_per_s": None if write_s is None else ds.n_transitions / write_s,
            "stored_mib": sum(
                ds.array(k).nbytes_stored() for k in ("steps/obs", "steps/state", "steps/actions", "steps/reward")
            )
            / 2**20,
            "open_ms": open_s * 1e3,
            "in_memory_load_s": load_s,
            "in_memory_transitions_per_s": mem_tps,
            "streaming_transitions_per_s": stream_tps,
            "streaming_resident_steps": resident,
            "batch_ms_in_memory": 1e3 * args.batch_size / mem_tps,
            "batches_per_omiga_step_in_memory": mem_tps / args.batch_size / OMIGA_STEPS_PER_S[task],
            "batches_per_omiga_step_streaming": stream_tps / args.batch_size / OMIGA_STEPS_PER_S[task],
        }
        if args.http:
            row |= over_http(args.workdir, path.name, args.batch_size, args.batches)
        results.append(row)
        print(json.dumps(row, indent=None, default=lambda x: round(x, 3)))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loader, batch {args.batch_size}, {args.threads} threads")
    cols = ["shape", "in-memory tr/s", "streaming tr/s", "batch ms", "batches/OMIGA step", "load s", "MiB"]
    if args.http:
        cols += ["HTTP streaming tr/s", "HTTP load s"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            r["task_shape"],
            f"{r['in_memory_transitions_per_s']:,.0f}",
            f"{r['streaming_transitions_per_s']:,.0f}",
            f"{r['batch_ms_in_memory']:.3f}",
            f"{r['batches_per_omiga_step_in_memory']:.0f} / {r['batches_per_omiga_step_streaming']:.0f}",
            f"{r['in_memory_load_s']:.2f}",
            f"{r['stored_mib']:.0f}",
            *(
                [f"{r['http_streaming_transitions_per_s']:,.0f}", f"{r['http_in_memory_load_s']:.2f}"]
                if args.http
                else []
            ),
        )
    Console(width=120).print(table)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
