"""Rolling a policy out into a dataset: which env runs which episode, and in what order episodes are
written, so that the data depend on the seed and the budget alone.

:func:`rollout_episodes` does the work; :class:`SlotSchedule` is its bookkeeping of episode slots
(unit-tested on its own), :class:`NoiseStreams` the policy noise of each slot.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from omgmg.collectors.common import RolloutPolicy
from omgmg.collectors.recorder import EndedEpisode, EpisodeRecorder
from omgmg.datakit.writer import DatasetWriter


class NoiseStreams:
    """Each env's policy noise from its own generator, restarted with the seed of every episode the
    env starts and drawn in blocks: an episode's t-th draw depends only on its seed and t, never on
    the other envs or on when the env runs."""

    def __init__(self, num_envs: int, kind: str, shape: tuple[int, ...], block: int = 256):
        self.kind, self.shape, self.block = kind, shape, block
        self.gens = [torch.Generator() for _ in range(num_envs)]
        self.buf = torch.empty((num_envs, block, *shape))
        self._buf_np = self.buf.numpy()  # the same memory: numpy's fancy indexing costs a third of torch's
        self.used = np.zeros(num_envs, np.int64)

    def restart(self, seeds: np.ndarray, envs: np.ndarray) -> None:
        """Env e (where ``envs``) restarts its stream from ``seeds[e]``."""
        for e in np.flatnonzero(envs):
            self.gens[e].manual_seed(int(seeds[e]))
            self._refill(e)

    def _refill(self, e: int) -> None:
        shape = (self.block, *self.shape)
        self.buf[e] = (
            torch.randn(shape, generator=self.gens[e])
            if self.kind == "normal"
            else torch.rand(shape, generator=self.gens[e])
        )
        self.used[e] = 0

    def draw(self, envs: np.ndarray, rows: slice = slice(None)) -> torch.Tensor:
        """The next draw of the envs in ``rows`` (default all); only the streams where ``envs`` (a mask
        over those rows) advance, the others' rows are unused."""
        used = self.used[rows]  # a view: advancing it advances the streams
        lo = rows.start or 0
        for e in np.flatnonzero(used == self.block):
            self._refill(lo + int(e))
        out = torch.from_numpy(self._buf_np[rows][np.arange(len(used)), np.minimum(used, self.block - 1)])
        used += envs
        return out


def phase_seed(seed: int, phase: int) -> int:
    """Episode j of a phase starts from seed ``phase_seed + j`` (kept below 2**31 for JAX's int32,
    with room for 2**24 episodes)."""
    return (seed * 7_368_787 + phase * 1_000_003 + 17) % (2**31 - 2**24)


class SlotSchedule:
    """Which episode slot each env runs, which it starts next, and which slot is written next.

    Env e starts with slot ``first + e`` and has slot ``first + E + e`` planned, so its auto-reset
    can start that one at once; when its episode ends, it moves on to its planned slot and is planned
    the lowest slot not yet given to any env. Slots are written in order from ``first``.
    """

    def __init__(self, num_envs: int, first: int):
        self.running = first + np.arange(num_envs)  # the slot each env runs
        self.planned = self.running + num_envs  # the slot each env starts when its episode ends
        self.next_free = first + 2 * num_envs  # the lowest slot given to no env yet
        self.next_to_write = first

    def episode_ended(self, env: int) -> int:
        """Env ``env``'s episode has ended: returns the slot it ran; the env moves on to its planned slot."""
        ended = int(self.running[env])
        self.running[env], self.planned[env] = self.planned[env], self.next_free
        self.next_free += 1
        return ended

    def needed_for_episodes(self, still_needed: int) -> np.ndarray:
        """(E,) which envs run one of the next ``still_needed`` slots to write."""
        return self.running < self.next_to_write + still_needed

    def needed_for_transitions(self, still_needed: int, steps_so_far: np.ndarray, ended: dict[int, int]) -> np.ndarray:
        """(E,) which envs run a slot that may still count towards ``still_needed`` transitions: a slot
        is needed while the slots before it may hold fewer. Their length is bounded below by the ended
        ones' lengths (``ended``: slot -> length, not yet written), the running ones' steps so far
        (``steps_so_far`` (E,)) and 1 for each other."""
        ended_slots = np.array(list(ended.keys()), np.int64)
        ended_lengths = np.array(list(ended.values()), np.int64)
        before = self.running[:, None] > np.concatenate([self.running, ended_slots])[None, :]  # (E, E + ended)
        known = before @ np.concatenate([steps_so_far, ended_lengths])
        unknown = self.running - self.next_to_write - before.sum(1)  # neither running nor ended: >= 1 step each
        return known + unknown < still_needed


def rollout_episodes(
    writer: DatasetWriter,
    policy: RolloutPolicy,
    vec,
    *,
    phase: int,
    until: tuple[str, int],
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Append episodes of ``policy`` until the writer holds ``until`` = (kind, count).

    Episode j of a phase (its *slot*) starts from a reset seeded ``phase_seed(seed, phase) + j`` and
    draws its policy noise from a stream seeded the same way, whichever env runs it. Each env is
    given its next slot when it starts one (so its auto-reset can start that slot at once), and no
    env waits for another: only the last episodes of a budget run alone. Episodes are appended in slot
    order as soon as every earlier slot has ended, until the budget is met (a transition budget cuts
    the last episode, stored as truncated).

    An episode depends on its slot's seed alone, so the data is a function of the seed and the
    budget: not of how long episodes run (slot j is kept whatever its length), nor of which env ran
    it, nor of the number of envs or worker processes; a smaller budget keeps a prefix of a larger
    one; an interrupted collection resumes at the first slot it had not committed.

    The vector env's independently stepping parts (``vec.groups()``: SMAX batches, worker
    processes) are pipelined: while one part steps, this process records the others' last step,
    computes their next actions and writes finished episodes; a part none of whose envs is still
    needed is not stepped at all.
    """
    _SlotRollout(writer, policy, vec, phase, until, seed, progress).run()


class _SlotRollout:
    """One call of :func:`rollout_episodes`: its state between the steps of the env parts."""

    def __init__(
        self, writer: DatasetWriter, policy: RolloutPolicy, vec, phase: int, until: tuple[str, int], seed: int, progress
    ):
        self.writer, self.policy, self.vec, self.phase, self.progress = writer, policy, vec, phase, progress
        self.kind, self.target = until
        self.base = phase_seed(seed, phase)
        if writer.progress.get("phase") != phase:  # a new phase: remember where it starts in the dataset
            writer.set_progress({**writer.progress, "phase": phase, "first_episode": writer.episodes_added})
        # and which seeds its episodes start from (provenance: omgmg.datakit.provenance.episode_seeds)
        seeded = dict(writer.progress.get("seeded", {}))
        if seeded.get(str(phase)) != [writer.progress["first_episode"], self.base]:
            seeded[str(phase)] = [writer.progress["first_episode"], self.base]
            writer.set_progress({**writer.progress, "seeded": seeded})
            writer.flush()
        E = vec.num_envs
        # on resume: the committed episodes are kept, and the next slot to write follows them
        self.slots = SlotSchedule(E, writer.episodes_added - writer.progress["first_episode"])
        self.ended: dict[int, dict] = {}  # slot -> an ended episode not yet written
        self.to_gather: list[tuple[int, EpisodeRecorder, EndedEpisode]] = []  # ended, arrays not gathered yet
        self.noise = NoiseStreams(E, policy.noise_kind, policy.noise_shape)

    def count(self) -> int:
        return self.writer.transitions_added if self.kind == "transitions" else self.writer.episodes_added

    def run(self) -> None:
        vec, slots, base = self.vec, self.slots, self.base
        r = vec.reset(base + slots.next_to_write)  # env e starts slot next_to_write + e
        self.noise.restart(base + slots.running, np.ones(vec.num_envs, bool))
        self.obs, self.avail = r.obs, r.avail
        self.groups = vec.groups()
        self.recorders = []
        for g in self.groups:
            self.recorders.append(EpisodeRecorder(vec.spec, g.size))
            self.recorders[-1].start(
                self.obs[g.envs].copy(),
                r.state[g.envs].copy(),
                None if self.avail is None else self.avail[g.envs].copy(),
            )
        # (actions, active, behaviour arrays) of each part's step in flight
        self.stepping: list[tuple[np.ndarray, np.ndarray, dict] | None] = [None] * len(self.groups)
        while self.count() < self.target:
            for k, g in enumerate(self.groups):
                if self.stepping[k] is not None:
                    self.record(k)
                active = self.needed()[g.envs]
                if active.any() and self.count() < self.target:
                    avail = None if self.avail is None else self.avail[g.envs]
                    actions, behaviour = self.policy.act(self.obs[g.envs], avail, self.noise.draw(active, g.envs))
                    g.step_async(actions, active=active, reseed=base + slots.planned[g.envs])
                    self.stepping[k] = (actions, active, behaviour)
                self.write_ready()  # gather and write earlier episodes while the envs step
            if not any(s is not None for s in self.stepping) and self.count() < self.target:
                # every needed episode has ended: write them (the slot to write next has ended or runs)
                if not self.write_ready():
                    raise RuntimeError(f"rollout stalled at episode slot {slots.next_to_write}; please report this")
        for k, s in enumerate(self.stepping):  # steps no episode needs: let them finish before the env is reused
            if s is not None:
                self.groups[k].step_wait()
        self.writer.set_progress(
            {**self.writer.progress, "phase": self.phase + 1, "first_episode": self.writer.episodes_added}
        )
        self.writer.flush()

    def write_ready(self) -> bool:
        """Gather the episodes that ended, write those whose turn has come; True if any was written."""
        for j, rec, m in self.to_gather:
            self.ended[j] = rec.gather(m)
        self.to_gather.clear()
        written = False
        while self.count() < self.target and self.slots.next_to_write in self.ended:
            ep = self.ended.pop(self.slots.next_to_write)
            left = self.target - self.count()
            if self.kind == "transitions" and len(ep["reward"]) > left:
                ep = cut_episode(ep, left)
            self.writer.add_episode(**ep)
            self.slots.next_to_write += 1
            written = True
            if self.progress:
                self.progress(min(self.count(), self.target), self.target)
        return written

    def needed(self) -> np.ndarray:
        """Which envs run a slot the budget may still need (this decides what runs, never the data)."""
        still_needed = self.target - self.count()
        if self.kind == "episodes":
            return self.slots.needed_for_episodes(still_needed)
        steps_so_far = np.concatenate([rec.now - rec.begin for rec in self.recorders])
        ended = {j: len(ep["reward"]) for j, ep in self.ended.items()}
        ended.update({j: m.length for j, _, m in self.to_gather})
        return self.slots.needed_for_transitions(still_needed, steps_so_far, ended)

    def record(self, k: int) -> None:
        """Part k's step has come back: note ended episodes, move their envs on to their next slot."""
        g, (actions, active, behaviour) = self.groups[k], self.stepping[k]
        self.stepping[k] = None
        step = g.step_wait()
        for m in self.recorders[k].add(actions, step, envs=active, gather=False, behaviour=behaviour):
            self.to_gather.append((self.slots.episode_ended(g.envs.start + m.env), self.recorders[k], m))
        moved = np.zeros(self.vec.num_envs, bool)
        moved[g.envs] = step.done & active
        self.noise.restart(self.base + self.slots.running, moved)
        self.obs[g.envs] = step.obs
        if self.avail is not None:
            self.avail[g.envs] = step.avail


def cut_episode(ep: dict, keep: int) -> dict:
    """The first ``keep`` steps of an episode, truncated (the budget ran out), with a real next obs."""
    per_step = ("obs", "state", "actions", "reward", "avail", "behaviour_log_prob", "behaviour_pre_clip")
    out = {k: v[:keep] for k, v in ep.items() if k in per_step}
    out["final_obs"], out["final_state"] = ep["obs"][keep], ep["state"][keep]
    if "avail" in ep:
        out["final_avail"] = ep["avail"][keep]
    if "won" in ep:
        out["won"] = False
    out["terminated"], out["truncated"] = False, True
    return out
