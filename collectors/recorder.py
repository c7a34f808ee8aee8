"""Whole episodes out of vector-env steps, as :meth:`DatasetWriter.add_episode` takes them.

Behaviour training records its rollouts with it (the replay store behind medium-replay), and
collection records the episodes it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omgmg.collectors.envs.base import VecStep
from omgmg.datakit.spec import EnvSpec


@dataclass
class EndedEpisode:
    """Where an ended episode lies in an :class:`EpisodeRecorder`, before its arrays are gathered."""

    env: int
    start: int  # step index of its first step
    end: int  # one past its last step
    final: tuple  # (final obs, final state, final avail or None)
    terminated: bool
    won: bool

    @property
    def length(self) -> int:
        return self.end - self.start


class EpisodeRecorder:
    """Turns vector steps into whole episodes for ``DatasetWriter.add_episode`` (raw observations,
    executed actions, final observations).

    Steps are copied into per-field arrays of shape (rows, E, ...) (one copy per field and step,
    whatever the number of envs), so an ended episode is one strided slice per field; rows no episode
    needs any more are dropped when the arrays fill up (or the arrays grow). ``add(..., gather=False)``
    only notes where ended episodes lie (cheap), and :meth:`gather` builds their arrays later, e.g.
    while the envs compute the next step.
    """

    def __init__(self, spec: EnvSpec, num_envs: int, rows: int = 256):
        self.spec, self.E, self.rows = spec, num_envs, rows

    def start(self, obs: np.ndarray, state: np.ndarray, avail: np.ndarray | None) -> None:
        self.buf: dict[str, np.ndarray] = {}  # field -> (rows, E, ...), allocated at the first step
        self.first = 0  # step index of row 0
        self.now = 0  # step index of the next step to be recorded
        self.begin = np.zeros(self.E, np.int64)  # step index at which each env's current episode began
        self.ungathered: dict[int, int] = {}  # id(EndedEpisode) -> its start, while its rows are still needed
        self.cur = (obs, state, avail)

    def add(
        self,
        actions: np.ndarray,
        step: VecStep,
        envs: np.ndarray | None = None,
        gather: bool = True,
        behaviour: dict[str, np.ndarray] | None = None,
    ):
        """Record one step of every env (or of the ``envs`` mask), with what the behaviour policy did
        (``behaviour``: ``behaviour_log_prob`` (E, N), ... as :class:`RolloutPolicy` gives them). Returns
        the recorded episodes that ended, in env order: (env, episode dict), or :class:`EndedEpisode`
        markers if not ``gather``."""
        obs, state, avail = self.cur
        t = self.now
        fields = {"obs": obs, "state": state, "actions": actions, "reward": step.reward, **(behaviour or {})}
        if avail is not None:
            fields["avail"] = avail
        if t - self.first == (len(self.buf["obs"]) if self.buf else 0):  # the arrays are full (or not made yet)
            self._make_room(fields)
        for name, value in fields.items():
            self.buf[name][t - self.first] = value
        self.now = t + 1
        ended = step.done if envs is None else step.done & envs
        marks = []
        for e in np.flatnonzero(ended):
            final = (step.final_obs[e], step.final_state[e], None if step.final_avail is None else step.final_avail[e])
            mark = EndedEpisode(int(e), int(self.begin[e]), t + 1, final, bool(step.terminated[e]), bool(step.won[e]))
            self.begin[e] = t + 1
            marks.append(mark)
        if envs is not None:
            self.begin[~envs] = t + 1  # an env not recorded now starts afresh when it is again
        self.cur = (step.obs, step.state, step.avail)
        if gather:
            return [(m.env, self.gather(m)) for m in marks]
        self.ungathered.update({id(m): m.start for m in marks})
        return marks

    def cut(self, e: int) -> dict | None:
        """End env e's episode now, as truncated (None if it has no steps yet)."""
        if self.now == self.begin[e]:
            return None
        obs, state, avail = self.cur
        mark = EndedEpisode(
            e,
            int(self.begin[e]),
            self.now,
            (obs[e], state[e], None if avail is None else avail[e]),
            terminated=False,
            won=False,
        )
        self.begin[e] = self.now
        return self.gather(mark)

    def gather(self, m: EndedEpisode) -> dict:
        """The arrays of an ended episode, as ``DatasetWriter.add_episode`` takes them."""
        self.ungathered.pop(id(m), None)
        rows, e = slice(m.start - self.first, m.end - self.first), m.env
        b = self.buf
        # copies: the rows are reused once no running episode needs them
        ep = {
            "obs": b["obs"][rows, e].copy(),
            "state": b["state"][rows, e].copy(),
            "actions": b["actions"][rows, e].copy(),
            "reward": b["reward"][rows, e].astype(np.float32),
            "final_obs": m.final[0],
            "final_state": m.final[1],
            "terminated": m.terminated,
            "truncated": not m.terminated,
        }
        if self.spec.discrete:
            ep["avail"], ep["final_avail"] = b["avail"][rows, e].copy(), m.final[2]
            ep["actions"] = ep["actions"].astype(np.int32)
        if self.spec.reports_wins:
            ep["won"] = m.won
        for name in b:
            if name.startswith("behaviour_"):
                ep[name] = b[name][rows, e].astype(np.float32)
        return ep

    def _make_room(self, fields: dict[str, np.ndarray]) -> None:
        """The arrays are full: drop the rows before the oldest step still needed, and double the
        arrays if that frees less than half of them (amortised: each row moves O(1) times)."""
        if not self.buf:
            self.buf = {k: np.empty((self.rows, *np.shape(v)), np.asarray(v).dtype) for k, v in fields.items()}
            return
        oldest = min([int(self.begin.min()), *self.ungathered.values()])
        live = self.now - oldest
        size = len(self.buf["obs"])
        new_size = size * 2 if live > size // 2 else size
        for k, a in self.buf.items():
            out = a if new_size == size else np.empty((new_size, *a.shape[1:]), a.dtype)
            out[:live] = a[oldest - self.first : self.now - self.first]
            self.buf[k] = out
        self.first = oldest
