"""Environment adapters: specs, names, determinism, auto-reset with final observations, backends."""

from __future__ import annotations

import numpy as np
import pytest

from omgmg.collectors.envs import check_compatible, make_env, make_vector_env, resolve, task_for_dataset
from omgmg.collectors.envs.smacv2 import choose_backend, sc2_capability_config
from omgmg.datakit import DatasetError

MAMUJOCO_SHAPES = {  # gymnasium-robotics 1.4 with agent_obsk=1
    "HalfCheetah-6x1": ((9, 9, 8, 9, 9, 8), 17, 1),
    "Hopper-3x1": ((8, 9, 8), 11, 1),
    "Ant-2x4": ((63, 63), 105, 4),
    "Walker2d-2x3": ((12, 12), 17, 3),
}


def random_actions(spec, rng, avail=None, E=None):
    if spec.discrete:
        shape = avail.shape[:-1]
        flat = avail.reshape(-1, avail.shape[-1])
        return np.array([rng.choice(np.flatnonzero(m)) for m in flat]).reshape(shape)
    size = (spec.n_agents, spec.action_dim) if E is None else (E, spec.n_agents, spec.action_dim)
    return rng.uniform(-1, 1, size).astype(np.float32)


# ----- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(MAMUJOCO_SHAPES))
def test_mamujoco_specs(task):
    env = make_env(f"MaMuJoCo/{task.lower()}")  # case-insensitive
    obs_dims, state_dim, act = MAMUJOCO_SHAPES[task]
    spec = env.spec
    assert spec.task == task and spec.obs_dims == obs_dims and spec.state_dim == state_dim
    assert spec.action_dim == act and not spec.discrete and spec.episode_limit == 1000
    assert spec.action_spaces[0].low == (-1.0,) * act
    obs, state, avail = env.reset(seed=0)
    assert obs.shape == (len(obs_dims), max(obs_dims)) and obs.dtype == np.float32
    assert state.shape == (state_dim,) and avail is None
    for i, d in enumerate(obs_dims):
        assert np.all(obs[i, d:] == 0)  # padding


@pytest.mark.parametrize(
    "name, message",
    [
        ("mamujoco/HalfCheetah-7x1", "valid: HalfCheetah-2x3, HalfCheetah-6x1"),
        ("mamujoco/Cheetah-6x1", "scenarios: Ant, CoupledHalfCheetah"),
        ("smacv2/protoss_6v6", "valid: protoss_5v5, terran_5v5, zerg_5v5"),
        ("atari/pong", "valid suites and example tasks: mamujoco: HalfCheetah-6x1"),
        ("Hopper-3x1", "name a task as SUITE/TASK"),
    ],
)
def test_unknown_names_list_the_valid_ones(name, message):
    with pytest.raises(DatasetError, match=message):
        resolve(name)


def test_names_are_canonicalised():
    assert resolve("SMACv2/Protoss_5_vs_5", backend="smax").task == "protoss_5v5"
    assert resolve("mamujoco", "walker2d-2x3").task == "Walker2d-2x3"
    assert resolve("fixture/Discrete").task == "discrete"


# ----- MaMuJoCo behaviour ----------------------------------------------------------------------------


def test_seeded_resets_and_steps_are_deterministic():
    a, b = make_env("mamujoco/Hopper-3x1"), make_env("mamujoco/Hopper-3x1")
    ra, rb = a.reset(seed=7), b.reset(seed=7)
    assert np.array_equal(ra.obs, rb.obs)
    assert not np.array_equal(ra.obs, a.reset(seed=8).obs)
    a.reset(seed=7)
    acts = np.random.default_rng(0).uniform(-1, 1, (20, 3, 1)).astype(np.float32)
    for x in acts:
        sa, sb = a.step(x), b.step(x)
        assert np.array_equal(sa.obs, sb.obs) and sa.reward == sb.reward


def test_hopper_falls_are_terminations_and_halfcheetah_time_limit_is_a_truncation():
    env = make_env("mamujoco/Hopper-3x1")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1000):  # noqa: B007 - t is read after the loop
        s = env.step(rng.uniform(-1, 1, (3, 1)).astype(np.float32))
        if s.terminated or s.truncated:
            break
    assert s.terminated and not s.truncated and t < 999
    cheetah = make_env("mamujoco/HalfCheetah-6x1")
    cheetah.reset(seed=0)
    zero = np.zeros((6, 1), np.float32)
    for _ in range(1000):
        s = cheetah.step(zero)
    assert s.truncated and not s.terminated


def test_omiga_observation_mode():
    env = make_env("mamujoco/HalfCheetah-6x1", obs_mode="omiga")
    assert env.spec.obs_dims == (23,) * 6 and env.spec.options == {"obs_mode": "omiga"}
    obs, state, _ = env.reset(seed=0)
    raw = make_env("mamujoco/HalfCheetah-6x1")
    raw_state = raw.reset(seed=0).state
    assert np.allclose(state, (raw_state - raw_state.mean()) / raw_state.std(), atol=1e-5)
    for i in range(6):
        full = np.concatenate([raw_state, np.eye(6)[i]])
        assert np.allclose(obs[i], (full - full.mean()) / full.std(), atol=1e-5)
    with pytest.raises(DatasetError, match="84 contact-force entries"):
        make_env("mamujoco/Ant-2x4", obs_mode="omiga")


def test_mujoco_keeps_quiet_and_writes_no_log_file(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    env = make_env("mamujoco/HalfCheetah-6x1")
    env.reset(seed=0)
    out, err = capfd.readouterr()
    assert "settotalmass" not in err + out and "Adroit" not in err + out
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


# ----- vectorised runners -----------------------------------------------------------------------------


def _reference_run(name, seed, num_envs, actions_per_step):
    """Step single envs by hand: per env, the list of (final obs, next obs) at each episode end."""
    envs = [make_env(name) for _ in range(num_envs)]
    for e, env in enumerate(envs):
        env.reset(seed=seed + e)
    ends = [[] for _ in range(num_envs)]
    obs_trace = []
    for actions in actions_per_step:
        row = []
        for e, env in enumerate(envs):
            s = env.step(actions[e])
            if s.terminated or s.truncated:
                nxt = env.reset(seed=None)
                ends[e].append((s.obs, nxt.obs, s.terminated, s.truncated))
                row.append(nxt.obs)
            else:
                row.append(s.obs)
        obs_trace.append(np.stack(row))
    return ends, obs_trace


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, workers",
    [("fixture/continuous", 1), ("fixture/continuous", 2), ("mamujoco/Hopper-3x1", 2), ("fixture/discrete", 1)],
)
def test_auto_reset_returns_final_observations(name, workers):
    E, T = 3, 60
    vec = make_vector_env(name, E, workers=workers)
    spec = vec.spec
    rng = np.random.default_rng(1)
    first = vec.reset(seed=11)
    actions_per_step, ends, trace = [], [[] for _ in range(E)], []
    avail = first.avail
    for _ in range(T):
        a = random_actions(spec, rng, avail=avail, E=E)
        actions_per_step.append(a)
        s = vec.step(a)
        for e in np.flatnonzero(s.done):
            ends[e].append((s.final_obs[e], s.obs[e], s.terminated[e], s.truncated[e]))
        trace.append(s.obs)
        avail = s.avail
    vec.close()
    if spec.discrete:  # masks differ per run; compare final observations only through a fresh vector run
        assert sum(map(len, ends)) > 0
        return
    ref_ends, ref_trace = _reference_run(name, 11, E, actions_per_step)
    assert sum(map(len, ends)) > 0, "the test needs at least one episode end"
    for got, want in zip(ends, ref_ends):
        assert len(got) == len(want)
        for (fo, no, te, tr), (rfo, rno, rte, rtr) in zip(got, want):
            assert np.array_equal(fo, rfo) and np.array_equal(no, rno) and (te, tr) == (rte, rtr)
            assert not np.array_equal(fo, no)  # the final observation is not the next episode's first
    assert all(np.array_equal(a, b) for a, b in zip(trace, ref_trace))


@pytest.mark.slow
def test_worker_processes_give_the_same_run_as_one_process():
    runs = []
    for workers in (1, 2):
        vec = make_vector_env("mamujoco/HalfCheetah-6x1", 4, workers=workers)
        r = vec.reset(seed=3)
        rng = np.random.default_rng(0)
        out = [r.obs]
        for _ in range(10):
            out.append(vec.step(rng.uniform(-1, 1, (4, 6, 1)).astype(np.float32)).obs)
        vec.close()
        runs.append(np.stack(out))
    assert np.array_equal(runs[0], runs[1])


def _fails_in_workers():
    import multiprocessing

    if multiprocessing.current_process().name != "MainProcess":
        raise ValueError("simulator crashed in a worker")
    from omgmg.collectors.envs.fixture import FixtureEnv

    return FixtureEnv("continuous")


@pytest.mark.slow
def test_worker_errors_surface_in_the_parent():
    from omgmg.collectors.envs.vector import SubprocVectorEnv

    with pytest.raises(DatasetError, match="no agent_conf '7x1'"):  # a bad task fails before any worker starts
        make_vector_env("mamujoco/HalfCheetah-7x1", 2, workers=2)
    with pytest.raises(RuntimeError, match="simulator crashed in a worker"):
        SubprocVectorEnv(_fails_in_workers, 4, workers=2)


# ----- SMACv2 backends --------------------------------------------------------------------------------


def test_sc2_backend_says_what_is_missing_and_how_to_choose_smax(monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "no-sc2"))
    with pytest.raises(DatasetError, match="smacv2 package is not installed.*backend='smax'"):
        choose_backend("sc2")
    with pytest.raises(DatasetError, match="sc2 backend cannot run"):
        make_env("smacv2/protoss_5v5", backend="sc2")
    backend, note = choose_backend(None)
    assert backend == "smax" and "not StarCraft II" in note
    with pytest.raises(DatasetError, match="unknown SMACv2 backend 'pysc2'"):
        choose_backend("pysc2")


class StandInCapabilityEnv:
    """smacv2's ``StarCraftCapabilityEnvWrapper`` as its code (oxwhirl/smacv2, starcraft2.py) behaves, on a
    script instead of the game: ``step`` returns (reward, terminated, info) with ``battle_won``,
    ``dead_allies`` and ``dead_enemies``, and ``episode_limit`` at a time-out only when built with
    ``continuing_episode=True``; a dead agent observes zeros and may only no-op (action 0)."""

    N, K, O, S, LIMIT = 5, 11, 10, 20, 4

    def __init__(self, **kwargs):
        self.kwargs, self.episode = kwargs, -1

    def get_env_info(self):
        return {"n_agents": self.N, "n_actions": self.K, "obs_shape": self.O, "state_shape": self.S,
                "episode_limit": self.LIMIT}  # fmt: skip

    def reset(self):
        self.episode, self.t, self.dead = self.episode + 1, 0, set()
        return self.get_obs(), self.get_state()

    def step(self, actions):
        assert len(actions) == self.N
        self.t += 1
        reward, info = 0.5, {"battle_won": False}
        if self.episode == 0 and self.t == 2:
            self.dead.add(4)
        won = self.episode == 0 and self.t == 3
        info |= {"dead_allies": len(self.dead), "dead_enemies": self.N if won else 0}
        if won:
            info["battle_won"], reward = True, reward + 10.0
            return reward, True, info
        if self.t >= self.LIMIT:
            if self.kwargs.get("continuing_episode"):
                info["episode_limit"] = True
            return reward, True, info
        return reward, False, info

    def get_obs(self):
        return [np.zeros(self.O) if i in self.dead else np.full(self.O, self.t + i, float) for i in range(self.N)]

    def get_state(self):
        return np.full(self.S, float(self.t))

    def get_avail_actions(self):
        return [[1] + [0] * (self.K - 1) if i in self.dead else [0] + [1] * (self.K - 1) for i in range(self.N)]

    def close(self):
        pass


def test_sc2_backend_keeps_smacv2s_meaning_of_each_step(monkeypatch):
    """Against a stand-in of smacv2's interface: the reward passes as SMACv2 scales it, a won battle
    is a termination with its win, the episode limit a truncation, dead agents keep their zeros and no-op."""
    import importlib.metadata
    import sys
    import types

    from omgmg.collectors.envs import smacv2 as sc2_module

    wrapper = types.ModuleType("smacv2.env.starcraft2.wrapper")
    wrapper.StarCraftCapabilityEnvWrapper = StandInCapabilityEnv
    for name in ("smacv2", "smacv2.env", "smacv2.env.starcraft2"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "smacv2.env.starcraft2.wrapper", wrapper)
    monkeypatch.setattr(sc2_module, "sc2_missing", lambda: None)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "1.0" if p == "smacv2" else real_version(p))
    env = make_env("smacv2/zerg_5v5", backend="sc2")
    assert env.env.kwargs["continuing_episode"] and env.env.kwargs["map_name"] == "10gen_zerg"
    assert env.spec.backend == "sc2" and env.spec.episode_limit == 4 and env.spec.n_actions == 11
    env.reset(seed=0)
    steps = [env.step(np.ones(5, int)) for _ in range(3)]
    assert [s.reward for s in steps] == [0.5, 0.5, 10.5]  # SMACv2's own scale, unchanged
    assert [(s.terminated, s.truncated, s.info["won"]) for s in steps] == [(False, False, False)] * 2 + [
        (True, False, True)
    ]
    assert not steps[1].obs[4].any() and steps[1].avail[4].tolist() == [True] + [False] * 10  # dead: no-op only
    env.reset(seed=0)
    steps = [env.step(np.ones(5, int)) for _ in range(4)]
    assert (steps[-1].terminated, steps[-1].truncated, steps[-1].info["won"]) == (False, True, False)
    with pytest.raises(DatasetError, match="reward_scale is an SMAX option"):
        resolve("smacv2/zerg_5v5", backend="sc2", reward_scale="smax")


def test_sc2_capability_config_matches_smacv2_5v5_settings():
    cfg = sc2_capability_config("terran", 5)
    assert cfg["team_gen"]["unit_types"] == ["marine", "marauder", "medivac"]
    assert cfg["team_gen"]["weights"] == [0.45, 0.45, 0.10]
    assert cfg["team_gen"]["exception_unit_types"] == ["medivac"]
    assert cfg["start_positions"]["dist_type"] == "surrounded_and_reflect" and cfg["n_enemies"] == 5


@pytest.fixture(scope="module")
def smax_vec():
    vec = make_vector_env("smacv2/protoss_5v5", 4, backend="smax")
    vec.reset(seed=0)
    return vec


@pytest.mark.slow
@pytest.mark.parametrize("race", ["protoss", "terran", "zerg"])
def test_smax_specs(race):
    from omgmg.collectors.envs.smax import SmaxVectorEnv

    spec = SmaxVectorEnv(f"{race}_5v5", 2).spec  # building compiles nothing
    assert spec.n_agents == 5 and spec.obs_dims == (127,) * 5 and spec.state_dim == 120
    assert spec.n_actions == 10 and spec.discrete and spec.reports_wins and spec.episode_limit == 200
    assert spec.backend == "smax" and spec.options["unit_weights"] == [0.5, 0.5]


@pytest.mark.slow
def test_smax_rewards_are_on_smacv2s_scale_by_default_and_smaxs_on_request(smax_vec):
    from omgmg.collectors.envs import task_for_dataset

    own = make_vector_env("smacv2/protoss_5v5", 4, backend="smax", reward_scale="smax")
    assert smax_vec.spec.options["reward_scale"] == "smacv2" and own.spec.options["reward_scale"] == "smax"
    a, b = smax_vec.reset(seed=5), own.reset(seed=5)
    assert np.array_equal(a.obs, b.obs)
    rng, scaled, raw, won = np.random.default_rng(0), [], [], []
    for _ in range(120):  # same seeds, same actions: the same battles, rewards 20 / (1 + 1) = 10 times larger
        logits = rng.random(a.avail.shape) + a.avail
        actions = logits.argmax(-1)
        sa, sb = smax_vec.step(actions), own.step(actions)
        assert np.array_equal(sa.won, sb.won) and np.array_equal(sa.terminated, sb.terminated)
        scaled.append(sa.reward)
        raw.append(sb.reward)
        won.append(sa.won)
        a = sa
    scaled, raw = np.asarray(scaled), np.asarray(raw)
    assert np.abs(raw).max() > 0 and np.allclose(scaled, 10 * raw, rtol=1e-6)
    assert raw.max() <= 2.0 + 1e-6  # SMAX's step reward: lost enemy health (at most 1 in all) + a win bonus of 1
    old = smax_vec.spec.replace(options={k: v for k, v in smax_vec.spec.options.items() if k != "reward_scale"})
    assert task_for_dataset(old).options == {"reward_scale": "smax"}  # datasets made before the change
    with pytest.raises(DatasetError, match="unknown SMAX reward_scale 'x'"):
        resolve("smacv2/protoss_5v5", backend="smax", reward_scale="x")


@pytest.mark.slow
def test_smax_steps_end_episodes_and_compiles_once(smax_vec):
    vec, spec = smax_vec, smax_vec.spec
    r = vec.reset(seed=5)
    assert r.obs.shape == (4, 5, 127) and r.avail.shape == (4, 5, 10) and r.avail.dtype == bool
    rng = np.random.default_rng(0)
    avail, ended = r.avail, 0
    for _ in range(260):  # longer than the episode limit: every env ends at least once
        s = vec.step(random_actions(spec, rng, avail=avail))
        assert s.avail.any(axis=2).all()  # every agent can always do something (no-op when dead)
        assert not (s.won & ~s.terminated).any()
        assert not (s.terminated & s.truncated).any()
        for e in np.flatnonzero(s.done):
            ended += 1
            assert not np.array_equal(s.final_obs[e], s.obs[e])
        avail = s.avail
    assert ended >= 4
    assert vec.core.step._cache_size() == 1 and vec.core.reset._cache_size() == 1


@pytest.mark.slow
def test_smax_time_limit_is_200_steps_and_a_truncation(smax_vec):
    vec = smax_vec
    vec.reset(seed=0)
    # units that only ever "stop" (action 4) are not all killed: with this seed two envs reach the limit
    lengths, truncated = np.zeros(vec.num_envs, int), np.zeros(vec.num_envs, bool)
    ended = np.zeros(vec.num_envs, bool)
    for t in range(1, 260):
        s = vec.step(np.full((vec.num_envs, 5), 4))
        first = s.done & ~ended
        lengths[first], truncated[first] = t, s.truncated[first]
        ended |= s.done
        if ended.all():
            break
    assert ended.all() and lengths.max() == 200  # SMACv2's limit, not SMAX's max_steps + 1
    assert truncated.any() and (lengths[truncated] == 200).all() and (lengths[~truncated] < 200).all()


@pytest.mark.slow
def test_smax_seeded_reset_is_deterministic_and_teams_are_race_only(smax_vec):
    a = smax_vec.reset(seed=9)
    types = np.concatenate([np.asarray(p.state.state.unit_types) for p in smax_vec._parts])  # (E, 10)
    b = smax_vec.reset(seed=9)
    assert np.array_equal(a.obs, b.obs) and np.array_equal(a.state, b.state)
    assert set(np.unique(types)) <= {2, 3}  # SMAX's stalker and zealot
    assert np.array_equal(types[:, :5], types[:, 5:])  # enemies mirror allies
    assert not np.array_equal(a.obs, smax_vec.reset(seed=10).obs)


# ----- datasets meet environments ---------------------------------------------------------------------


def test_dataset_compatibility_checks(tmp_path):
    from omgmg.collectors.fixtures import fixture_spec

    env = make_env("fixture/continuous")
    check_compatible(fixture_spec("continuous"), env.spec)
    with pytest.raises(DatasetError, match="does not fit the environment.*task fixture/discrete"):
        check_compatible(fixture_spec("discrete"), env.spec)
    omiga_like = make_env("mamujoco/Hopper-3x1", obs_mode="omiga").spec.replace(backend="omiga-hdf5")
    ref = task_for_dataset(omiga_like)
    assert (ref.backend, ref.options) == ("gymnasium-robotics", {"obs_mode": "omiga"})
    with pytest.raises(DatasetError, match="obs_mode omiga vs None"):
        check_compatible(omiga_like, make_env("mamujoco/Hopper-3x1").spec)


@pytest.mark.slow
def test_smax_parts_step_exactly_like_one_batch(smax_vec):
    """Envs split into separately dispatched batches (stepped whole, or part by part through
    ``groups()`` as the collector does) give the results of one vmapped batch."""
    import dataclasses

    parted = make_vector_env("smacv2/protoss_5v5", 4, backend="smax", parts=2)
    a, b = smax_vec.reset(seed=3), parted.reset(seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    groups = parted.groups()
    assert [(g.envs.start, g.envs.stop) for g in groups] == [(0, 2), (2, 4)]
    avail, ends = a.avail, 0
    for t in range(120):
        actions = _first_available(smax_vec, avail)
        active = np.array([True, t % 3 > 0, True, t % 5 > 0])
        reseed = np.array([50 + t, -1, 70 + t, -1])
        whole = smax_vec.step(actions, active=active, reseed=reseed)
        if t % 2:
            step = parted.step(actions, active=active, reseed=reseed)
        else:  # part by part, the second dispatched before the first is fetched
            for g in groups:
                g.step_async(actions[g.envs], active=active[g.envs], reseed=reseed[g.envs])
            parts = [g.step_wait() for g in groups]
            step = type(whole)(*(np.concatenate(x) for x in zip(*map(dataclasses.astuple, parts))))
        for f in dataclasses.fields(whole):
            assert np.array_equal(getattr(step, f.name), getattr(whole, f.name)), (t, f.name)
        avail, ends = whole.avail, ends + int(whole.done.sum())
    assert ends > 0


def _first_available(vec, avail):
    if not vec.spec.discrete:
        return np.zeros((vec.num_envs, vec.spec.n_agents, vec.spec.action_dim), np.float32)
    return avail.argmax(-1)  # each env's action depends on its own observation only


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["serial", "subproc", "smax"])
def test_paused_envs_keep_their_state_and_reseeded_envs_restart_from_the_seed(runner, smax_vec):
    vec = (
        smax_vec
        if runner == "smax"
        else make_vector_env("fixture/discrete", 4, workers=2 if runner == "subproc" else 1)
    )
    try:
        r = vec.reset(seed=5)
        avail, straight = r.avail, []
        for _ in range(6):
            s = vec.step(_first_available(vec, avail))
            avail = s.avail
            straight.append(s.obs[1])
        r = vec.reset(seed=5)
        avail, paused = r.avail, []
        active = np.array([True, False, True, True])
        for t in range(9):  # env 1 sits out the first three steps
            s = vec.step(_first_available(vec, avail), active=None if t >= 3 else active)
            if t < 3:
                assert np.array_equal(s.obs[1], r.obs[1]) and s.reward[1] == 0 and not s.done[1]
            else:
                paused.append(s.obs[1])
            avail = s.avail
        assert all(np.array_equal(a, b) for a, b in zip(straight, paused))

        fresh = vec.reset(seed=7).obs[2]  # env 2 of a reset with seed 7 starts from seed 7 + 2
        r = vec.reset(seed=100)
        avail = r.avail
        reseed = np.array([-1, -1, 9, -1])
        for _ in range(300):
            s = vec.step(_first_available(vec, avail), reseed=reseed)
            avail = s.avail
            if s.done[2]:
                break
        assert s.done[2] and np.array_equal(s.obs[2], fresh)
    finally:
        if runner != "smax":
            vec.close()
