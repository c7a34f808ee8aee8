"""Vectorised runners for environments that step on the CPU one at a time (MaMuJoCo, fixtures).

- :class:`SerialVectorEnv`: E envs in this process.
- :class:`SubprocVectorEnv`: E envs split over W worker processes, each stepping its share as one
  :class:`EnvBatch` per message, so one round trip serves E/W env steps.

Both can step a subset of their envs (``step(actions, active)``), so rollouts that wait for some
envs do not pay for the others, and can restart an env whose episode ends from a given seed
(``reseed``) instead of its own RNG, without a separate reset round trip.

Both share :class:`EnvBatch` for auto-reset and final observations. Seeding: env e of a vector
reset with seed s is reset with seed ``s + e``; later auto-resets continue each env's own RNG, so a
run is a pure function of the seed whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable

import numpy as np

from omgmg.collectors.envs.base import MultiAgentEnv, Reset, VecStep, VectorEnv


class EnvBatch:
    """A list of envs stepped in turn with auto-reset; the common core of every CPU runner."""

    def __init__(self, envs: list[MultiAgentEnv]):
        self.envs = envs
        self.spec = envs[0].spec

    def reset(self, seeds: list[int]) -> Reset:
        out = [env.reset(seed=s) for env, s in zip(self.envs, seeds)]
        return _stack_reset(out, self.spec.discrete)

    def step(
        self,
        actions: np.ndarray,
        out: VecStep | None = None,
        active: np.ndarray | None = None,
        reseed: np.ndarray | None = None,
    ) -> VecStep:
        """Step every env (or those ``active``); results go into ``out`` (e.g. shared-memory views)
        or fresh arrays. An inactive env is not stepped: no reward, no end, its observation rows left as they were.
        An env whose episode ends restarts from ``reseed[e]`` where that is >= 0, else continues its RNG."""
        out = out or _empty_vecstep(self.spec, len(self.envs))
        discrete = self.spec.discrete
        for e, env in enumerate(self.envs):
            if active is not None and not active[e]:  # not stepped: no reward, no end, same observation
                out.reward[e], out.terminated[e], out.truncated[e], out.won[e] = 0.0, False, False, False
                continue
            s = env.step(actions[e])
            out.reward[e], out.terminated[e], out.truncated[e] = s.reward, s.terminated, s.truncated
            out.final_obs[e], out.final_state[e] = s.obs, s.state
            if discrete:
                out.final_avail[e] = s.avail
            out.won[e] = bool(s.info.get("won", False)) if (s.terminated or s.truncated) else False
            if s.terminated or s.truncated:
                s = env.reset(seed=None if reseed is None or reseed[e] < 0 else int(reseed[e]))
            out.obs[e], out.state[e] = s.obs, s.state
            if discrete:
                out.avail[e] = s.avail
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _vecstep_layout(spec, E: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """Shape and dtype of every VecStep field for E envs (None-valued fields left out)."""
    N, O, S = spec.n_agents, spec.obs_dim, spec.state_dim
    layout = {
        "obs": ((E, N, O), np.float32),
        "state": ((E, S), np.float32),
        "reward": ((E,), np.float32),
        "terminated": ((E,), np.bool_),
        "truncated": ((E,), np.bool_),
        "won": ((E,), np.bool_),
        "final_obs": ((E, N, O), np.float32),
        "final_state": ((E, S), np.float32),
    }
    if spec.discrete:
        layout["avail"] = layout["final_avail"] = ((E, N, spec.n_actions), np.bool_)
    return layout


def _empty_vecstep(spec, E: int) -> VecStep:
    arrays = {k: np.zeros(shape, dtype) for k, (shape, dtype) in _vecstep_layout(spec, E).items()}
    return VecStep(**{f: arrays.get(f) for f in VecStep.__dataclass_fields__})


def _remember(out: VecStep, r: Reset) -> None:
    """Put a reset's observations into a runner's step buffer: what an env not stepped next reports."""
    out.obs[...], out.state[...] = r.obs, r.state
    if r.avail is not None:
        out.avail[...] = r.avail


def _copy(step: VecStep) -> VecStep:
    """A copy the caller may keep: runners overwrite their buffers in place on the next step."""
    return VecStep(**{f: None if (v := getattr(step, f)) is None else v.copy() for f in VecStep.__dataclass_fields__})


def _stack_reset(out: list[Reset], discrete: bool) -> Reset:
    return Reset(
        np.stack([r.obs for r in out]),
        np.stack([r.state for r in out]),
        np.stack([r.avail for r in out]) if discrete else None,
    )


class SerialVectorEnv(VectorEnv):
    """E envs in this process."""

    def __init__(self, make: Callable[[], MultiAgentEnv], num_envs: int):
        self.batch = EnvBatch([make() for _ in range(num_envs)])
        self.spec, self.num_envs = self.batch.spec, num_envs
        self._out = _empty_vecstep(self.spec, num_envs)  # an inactive env's rows keep its last result

    def reset(self, seed: int) -> Reset:
        r = self.batch.reset([seed + e for e in range(self.num_envs)])
        _remember(self._out, r)
        return r

    def step(self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None) -> VecStep:
        self.batch.step(actions, self._out, active, reseed)
        return _copy(self._out)

    def close(self) -> None:
        self.batch.close()


def _shared(buffers: dict, lo: int, hi: int) -> dict[str, np.ndarray]:
    """numpy views of rows lo:hi of shared arrays created by the parent ({name: (raw, shape, dtype)})."""
    return {k: np.frombuffer(raw, dtype=dtype).reshape(shape)[lo:hi] for k, (raw, shape, dtype) in buffers.items()}


SPIN_SECONDS = 2e-4


def _poll_briefly(conn) -> None:
    """Poll a pipe for up to SPIN_SECONDS before blocking on it: a process woken from a blocking read
    costs tens of microseconds per step on a virtual machine, more than a short poll."""
    deadline = time.perf_counter() + SPIN_SECONDS
    while not conn.poll(0) and time.perf_counter() < deadline:
        pass


def _worker(conn, make: Callable[[], MultiAgentEnv], lo: int, hi: int, buffers: dict) -> None:
    batch = None
    try:
        batch = EnvBatch([make() for _ in range(hi - lo)])
        views = _shared(buffers, lo, hi)
        out = VecStep(**{f: views.get(f) for f in VecStep.__dataclass_fields__})
        actions, active, reseed = views["actions"], views["active"], views["reseed"]
        conn.send(("ok", batch.spec))
        while True:
            _poll_briefly(conn)
            msg = conn.recv_bytes()
            if msg == b"s":  # step: actions are in shared memory, results go there too
                batch.step(actions, out, active, reseed)
                conn.send_bytes(b"k")
            elif msg == b"r":
                conn.send(("ok", batch.reset(conn.recv())))
            elif msg == b"c":
                break
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        pass  # the parent is gone or stopping: nothing to report, nobody to report to
    except Exception as e:  # report to the parent instead of dying silently
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        if batch is not None:
            batch.close()
        conn.close()


class SubprocVectorEnv(VectorEnv):
    """E envs split over W streams: this process steps the first share itself while W - 1 worker
    processes (``spawn``: safe next to torch and JAX threads) step the others.

    Actions and results travel through shared memory and the pipes carry one byte per step; since
    this process works while the workers do, their wake-up latency is hidden. Measured on 2 cores
    (benchmarks/envs.py): this beats W worker processes with an idle parent by about 20%.
    """

    def __init__(self, make: Callable[[], MultiAgentEnv], num_envs: int, workers: int = 2):
        workers = max(1, min(workers, num_envs))
        self.num_envs = num_envs
        probe = make()  # builds in this process first: a bad task fails here with its own clear error
        self.spec = spec = probe.spec
        probe.close()
        ctx = mp.get_context("spawn")
        layout = _vecstep_layout(spec, num_envs)
        layout["actions"] = (
            ((num_envs, spec.n_agents), np.int64)
            if spec.discrete
            else ((num_envs, spec.n_agents, spec.action_dim), np.float32)
        )
        layout["active"] = ((num_envs,), np.bool_)
        layout["reseed"] = ((num_envs,), np.int64)
        self._buffers = {
            k: (ctx.RawArray("b", int(np.prod(shape)) * np.dtype(dtype).itemsize), shape, dtype)
            for k, (shape, dtype) in layout.items()
        }
        self._views = _shared(self._buffers, 0, num_envs)
        counts = [num_envs // workers + (1 if w < num_envs % workers else 0) for w in range(workers)]
        self._offsets = np.cumsum([0] + counts)
        self._conns, self._procs = [], []
        # stream 0 runs here, in this process
        local_out = _shared(self._buffers, 0, int(self._offsets[1]))
        self._local = EnvBatch([make() for _ in range(counts[0])])
        self._local_out = VecStep(**{f: local_out.get(f) for f in VecStep.__dataclass_fields__})
        for w in range(1, workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                daemon=True,
                args=(child, make, int(self._offsets[w]), int(self._offsets[w + 1]), self._buffers),
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for c in self._conns:
            self._receive(c)

    def _receive(self, conn):
        try:
            status, payload = conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("an environment worker process died; run with workers=1 to see its error") from None
        if status == "error":
            self.close()
            raise RuntimeError(f"environment worker failed: {payload}")
        return payload

    def reset(self, seed: int) -> Reset:
        for w, conn in enumerate(self._conns, start=1):
            conn.send_bytes(b"r")
            conn.send([seed + e for e in range(self._offsets[w], self._offsets[w + 1])])
        parts = [self._local.reset([seed + e for e in range(self._offsets[1])])]
        parts += [self._receive(c) for c in self._conns]
        r = Reset(*(None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in range(3)))
        _remember(VecStep(**{f: self._views.get(f) for f in VecStep.__dataclass_fields__}), r)
        return r

    def step(self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None) -> VecStep:
        views, local = self._views, slice(0, self._offsets[1])
        views["actions"][...] = actions
        views["active"][...] = True if active is None else active
        views["reseed"][...] = -1 if reseed is None else reseed
        for conn in self._conns:
            conn.send_bytes(b"s")
        self._local.step(actions[local], self._local_out, views["active"][local], views["reseed"][local])
        for conn in self._conns:
            _poll_briefly(conn)
            try:
                if conn.recv_bytes() != b"k":
                    raise EOFError
            except EOFError:
                self.close()
                raise RuntimeError("an environment worker process died while stepping") from None
        return _copy(VecStep(**{f: self._views.get(f) for f in VecStep.__dataclass_fields__}))

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send_bytes(b"c")
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []
        if getattr(self, "_local", None) is not None:
            self._local.close()
            self._local = None
