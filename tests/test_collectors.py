"""Behaviour policies and dataset collection, on the fixture suite (fast, deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import continuous_spec

from omgmg.cli.data import main as data_cli
from omgmg.collectors.behaviour import load_agent
from omgmg.collectors.collect import CollectRequest, collect, random_policy
from omgmg.collectors.common import Rollout, gae, stacked_forward
from omgmg.collectors.envs import resolve
from omgmg.collectors.envs.base import EnvGroup, MultiAgentEnv, Reset, Step, VecStep, VectorEnv
from omgmg.collectors.envs.vector import SerialVectorEnv
from omgmg.collectors.fixtures import fixture_spec
from omgmg.collectors.happo import HAPPOAgent, HAPPOConfig
from omgmg.collectors.mappo import MAPPOAgent, MAPPOConfig
from omgmg.collectors.recorder import EpisodeRecorder
from omgmg.collectors.rollout import SlotSchedule, rollout_episodes
from omgmg.collectors.runs import score
from omgmg.collectors.training import train_behaviour
from omgmg.datakit import DatasetError, iter_episodes, open_dataset, validate
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.writer import DatasetWriter


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


SMALL = dict(num_envs=4, rollout_len=25, eval_every=1000)


# ----- recording episodes out of vector steps -------------------------------------------------------------------


def test_episode_recorder_keeps_every_episode_whole_while_its_rows_move():
    """Ragged episodes, some recorded late (gather=False) and some envs paused, through a recorder whose
    arrays start at 4 rows (so they are compacted and grown many times): every episode comes out
    exactly as a plain per-env list of its steps."""
    spec = fixture_spec("discrete")
    N, O, S, K = spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions
    E, rng = 5, np.random.default_rng(0)
    rec = EpisodeRecorder(spec, E, rows=4)
    obs, state, avail = rng.normal(size=(E, N, O)), rng.normal(size=(E, S)), rng.random((E, N, K)) < 0.7
    rec.start(obs, state, avail)
    expected = [[] for _ in range(E)]  # the current episode's steps per env: (obs, state, avail, action, reward)
    pending, got, want = [], [], []
    for t in range(400):
        actions = rng.integers(0, K, (E, N))
        envs = (rng.random(E) < 0.9) | (np.arange(E) == 0)
        # env 0 runs one 60-step episode first: the arrays must grow to keep it
        done = (rng.random(E) < 0.2) & ((np.arange(E) > 0) | (t >= 59))
        reward = rng.normal(size=E).astype(np.float32)
        nobs, nstate, navail = rng.normal(size=(E, N, O)), rng.normal(size=(E, S)), rng.random((E, N, K)) < 0.7
        final_obs, final_state, final_avail = (
            rng.normal(size=(E, N, O)),
            rng.normal(size=(E, S)),
            rng.random((E, N, K)) < 0.7,
        )
        step = VecStep(
            nobs,
            nstate,
            navail,
            reward,
            done & (rng.random(E) < 0.5),
            np.zeros(E, bool),
            np.zeros(E, bool),
            final_obs,
            final_state,
            final_avail,
        )
        step.truncated[:] = done & ~step.terminated
        for e in range(E):
            if envs[e]:
                expected[e].append((obs[e], state[e], avail[e], actions[e], reward[e]))
                if done[e]:
                    want.append((expected[e], final_obs[e]))
                    expected[e] = []
            else:
                expected[e] = []
        pending += rec.add(actions, step, envs=envs, gather=False)
        if t % 7 == 0:  # gather late, after more steps have moved the arrays
            got += [rec.gather(m) for m in pending]
            pending = []
        obs, state, avail = nobs, nstate, navail
    got += [rec.gather(m) for m in pending]
    key = lambda ep: float(ep["final_obs"].sum())  # noqa: E731 - order episodes the same way
    got, want = sorted(got, key=key), sorted(want, key=lambda w: float(w[1].sum()))
    assert len(got) == len(want) > 100 and max(len(w[0]) for w in want) >= 60
    for ep, (steps, final_obs) in zip(got, want):
        np.testing.assert_array_equal(ep["obs"], np.stack([s[0] for s in steps]))
        np.testing.assert_array_equal(ep["state"], np.stack([s[1] for s in steps]))
        np.testing.assert_array_equal(ep["avail"], np.stack([s[2] for s in steps]))
        np.testing.assert_array_equal(ep["actions"], np.stack([s[3] for s in steps]))
        np.testing.assert_array_equal(ep["reward"], np.array([s[4] for s in steps], np.float32))
        np.testing.assert_array_equal(ep["final_obs"], final_obs)


# ----- GAE ------------------------------------------------------------------------------------------------------


def gae_reference(r, v, nv, term, done, gamma, lam):
    """Plain per-env loop, written from the definition."""
    T, E = r.shape
    adv = np.zeros((T, E))
    for e in range(E):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if term[t, e] else gamma * nv[t, e]
            delta = r[t, e] + bootstrap - v[t, e]
            running = delta + (0.0 if done[t, e] else gamma * lam * running)
            adv[t, e] = running
    return adv


def test_gae_matches_a_reference_loop():
    rng = np.random.default_rng(0)
    T, E = 9, 4
    r, v, nv = rng.normal(size=(T, E)), rng.normal(size=(T, E)), rng.normal(size=(T, E))
    term = rng.random((T, E)) < 0.15
    trunc = (rng.random((T, E)) < 0.15) & ~term
    done = term | trunc
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    adv, ret = gae(f(r), f(v), f(nv), f(term.astype(float)), f(done.astype(float)), 0.97, 0.9)
    ref = gae_reference(r, v, nv, term, done, 0.97, 0.9)
    assert np.allclose(adv.numpy(), ref) and np.allclose(ret.numpy(), ref + v)


def test_gae_bootstraps_through_truncation_but_not_termination():
    f = lambda *x: torch.tensor([x], dtype=torch.float64)  # noqa: E731  (T=1, E=2)
    adv, _ = gae(f(1.0, 1.0), f(2.0, 2.0), f(10.0, 10.0), f(0.0, 1.0), f(1.0, 1.0), 0.99, 0.95)
    assert adv[0, 0].item() == pytest.approx(1 + 0.99 * 10 - 2)  # truncated: V(final obs) counts
    assert adv[0, 1].item() == pytest.approx(1 - 2)  # terminated: no bootstrap


# ----- HAPPO ----------------------------------------------------------------------------------------------------


def test_happo_sequential_loss_on_hand_values():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.0]))
    old = torch.zeros(3)
    factor = torch.tensor([2.0, 1.0, 0.5])
    adv = torch.tensor([1.0, -1.0, 2.0])
    # ratios 1.5, 0.5, 1.0; clip 0.2: min(1.5*2, 1.2*2)=2.4; min(0.5*-1, 0.8*-1)=-0.8; min(1*1, 1*1)=1
    loss = HAPPOAgent.sequential_policy_loss(logp, old, factor, adv, 0.2)
    assert loss.item() == pytest.approx(-(2.4 - 0.8 + 1.0) / 3)


def _fake_rollout(spec, agent, T=6, E=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, E, spec.n_agents, spec.obs_dim, generator=g)
    actions, logp = agent.act(obs.reshape(T * E, spec.n_agents, -1), None, False, g)
    return Rollout(
        obs=obs,
        state=torch.randn(T, E, spec.state_dim, generator=g),
        actions=actions.reshape(T, E, spec.n_agents, -1),
        log_probs=logp.reshape(T, E, -1),
        values=torch.randn(T, E, generator=g),
        next_values=torch.randn(T, E, generator=g),
        rewards=torch.randn(T, E, generator=g),
        terminated=torch.zeros(T, E),
        done=torch.zeros(T, E),
    )


def test_happo_factor_compounds_every_agents_updated_ratio():
    spec = fixture_spec("continuous")
    agent = HAPPOAgent(spec, HAPPOConfig(epochs=3, actor_lr=1e-2))
    ro = _fake_rollout(spec, agent)
    adv = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    stats = agent.update(ro, adv, adv + ro.values, torch.Generator().manual_seed(2))
    flat = ro.flat()
    with torch.no_grad():  # after the update every agent has been updated, so M = prod_i r_i(new)
        product = torch.ones(flat.obs.shape[0])
        for i in range(spec.n_agents):
            new = agent._log_prob(
                agent.actors[i](flat.obs[:, i]), agent.log_stds[i], flat.actions[:, i], agent.action_mask[i]
            )
            product *= torch.exp(new - flat.log_probs[:, i])
    assert stats["policy/factor_mean"] == pytest.approx(product.mean().item(), rel=1e-5)
    assert abs(stats["policy/factor_mean"] - 1) > 1e-4  # the policies did move


def test_happo_agents_share_no_parameters_or_optimiser():
    agent = HAPPOAgent(fixture_spec("continuous"), HAPPOConfig())
    owned = [{id(p) for g in o.param_groups for p in g["params"]} for o in agent.actor_optims]
    assert all(not (owned[i] & owned[j]) for i in range(3) for j in range(i + 1, 3))
    assert all(id(agent.log_stds[i]) in owned[i] for i in range(3))


@pytest.mark.parametrize("policy", ["tanh", "capped", "clip"])
def test_happo_policies_keep_executed_actions_in_the_bounds_and_padding_zero(policy):
    spec = continuous_spec()  # bounds [-1, 1] x [-2, 2], [-0.5, 0.5], [-1, 1]^2; agent b's second entry is padding
    low, high, mask = (torch.from_numpy(x) for x in spec.action_bounds())
    agent = HAPPOAgent(spec, HAPPOConfig(init_log_std=0.5, policy=policy))
    with torch.no_grad():  # means far past the bounds: what the clip policy drifted to on Hopper
        for actor in agent.actors:
            actor[-1].bias.fill_(3.0)
    u, _ = agent.act(torch.zeros(2000, 3, spec.obs_dim), None, False, torch.Generator().manual_seed(0))
    a = torch.from_numpy(agent.executed(u))
    assert (a >= low).all() and (a <= high).all() and (a[:, 1, 1] == 0).all()
    on_bound = ((a == low) | (a == high)) & (mask > 0)
    if policy == "tanh":  # inside, however far the mean went; on a bound only where tanh saturates in float32
        assert on_bound.float().mean() < 0.01 and not on_bound[(u.abs() < 8).expand_as(on_bound)].any()
    elif policy == "capped":  # the mean stays inside the bounds and the std under its cap
        assert torch.all(agent._std(agent.log_std) <= agent.cfg.max_std)
        assert 0.2 < on_bound[:, 0, 0].float().mean() < 0.5  # a mean near the bound: some samples clipped
    else:
        assert on_bound[:, 0, 0].float().mean() > 0.8  # a mean past the bound: most samples on it


def test_tanh_policy_log_prob_is_the_density_of_the_squashed_action():
    from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

    spec = continuous_spec()
    agent = HAPPOAgent(spec, HAPPOConfig(init_log_std=0.3, policy="tanh"))
    obs = torch.randn(500, 3, spec.obs_dim, generator=torch.Generator().manual_seed(1))
    u, gaussian = agent.act(obs, None, False, torch.Generator().manual_seed(2))
    got = agent.log_prob_of_action(u, gaussian)
    mean = stacked_forward(agent.actors, obs).detach()
    low, high, mask = spec.action_bounds()
    for i, box in enumerate(spec.action_spaces):
        d = box.dim
        c, h = torch.from_numpy((high[i, :d] + low[i, :d]) / 2), torch.from_numpy((high[i, :d] - low[i, :d]) / 2)
        dist = TransformedDistribution(
            Normal(mean[:, i, :d], agent.log_std[i, :d].detach().exp()), [TanhTransform(), AffineTransform(c, h)]
        )
        a = torch.from_numpy(agent.executed(u))[:, i, :d]
        assert torch.allclose(got[:, i], dist.log_prob(a).sum(-1), atol=2e-3), i


def test_runs_and_checkpoints_made_before_the_policy_setting_are_the_clip_policy(tmp_path):
    from omgmg.collectors.behaviour import load_agent
    from omgmg.collectors.config import run_key
    from omgmg.datakit.checkpoints import load_checkpoint, save_checkpoint

    legacy = run_key(HAPPOConfig(policy="clip"))
    assert "policy" not in legacy and "max_std" not in legacy  # the directory name runs had before the setting
    assert run_key(HAPPOConfig())["policy"] == "tanh"
    cfg = HAPPOConfig(total_env_steps=400, num_envs=2, rollout_len=100, eval_every=200, policy="clip")
    run = train_behaviour(resolve("fixture/continuous"), "happo", cfg, home=tmp_path)
    state = load_checkpoint(run.checkpoints()[-1])
    for key in ("policy", "max_std"):
        del state["config"][key]  # a checkpoint written before the setting existed
    save_checkpoint(state, tmp_path / "old.pt")
    assert load_agent(tmp_path / "old.pt")[0].cfg.policy == "clip"
    with pytest.raises(ConfigError, match="policy must be one of tanh, capped, clip"):
        HAPPOConfig(policy="beta")


# ----- MAPPO / masks --------------------------------------------------------------------------------------------


def test_masked_actions_are_never_sampled():
    spec = fixture_spec("discrete")
    agent = MAPPOAgent(spec, MAPPOConfig())
    g = torch.Generator().manual_seed(0)
    avail = torch.rand(2000, 3, spec.n_actions, generator=g) < 0.3
    avail[..., 2] = True
    actions, logp = agent.act(torch.randn(2000, 3, spec.obs_dim, generator=g), avail, False, g)
    assert avail.gather(-1, actions[..., None]).all() and torch.isfinite(logp).all()
    greedy, _ = agent.act(torch.randn(2000, 3, spec.obs_dim, generator=g), avail, True, g)
    assert avail.gather(-1, greedy[..., None]).all()
    for policy in (random_policy(spec), agent.sampler()):  # the frozen policies datasets are collected with
        assert policy.noise_kind == "uniform"
        sampled, behaviour = policy.act(
            np.zeros((2000, 3, spec.obs_dim), np.float32),
            avail.numpy(),
            torch.rand(2000, *policy.noise_shape, generator=g),
        )
        assert np.take_along_axis(avail.numpy(), sampled[..., None].astype(int), -1).all()
        assert len(np.unique(sampled)) > 1
        logp = behaviour["behaviour_log_prob"]
        assert logp.shape == (2000, 3) and (logp <= 0).all() and np.isfinite(logp).all()
    # the random policy records the uniform probability over the available actions
    _, behaviour = random_policy(spec).act(None, avail.numpy(), torch.rand(2000, *policy.noise_shape, generator=g))
    assert np.allclose(behaviour["behaviour_log_prob"], -np.log(avail.numpy().sum(-1)))


def test_frozen_samplers_match_the_agents_policies():
    g = torch.Generator().manual_seed(0)
    spec = fixture_spec("continuous")
    happo = HAPPOAgent(spec, HAPPOConfig(init_log_std=0.5))
    happo.obs_norm.update(torch.randn(64, 3, spec.obs_dim, generator=g) * 3 + 1)
    obs = torch.randn(256, 3, spec.obs_dim, generator=g).numpy()
    actions, _ = happo.act(
        happo.obs_norm.normalise(torch.from_numpy(obs)), None, False, torch.Generator().manual_seed(7)
    )
    frozen = happo.sampler()
    noise = torch.randn((256, *frozen.noise_shape), generator=torch.Generator().manual_seed(7))
    executed, behaviour = frozen.act(obs, None, noise)
    assert np.allclose(executed, happo.executed(actions), atol=1e-5)
    # the log-density it records is the agent's own, of the executed (tanh-squashed) action
    _, gaussian = happo.act(
        happo.obs_norm.normalise(torch.from_numpy(obs)), None, False, torch.Generator().manual_seed(7)
    )
    expected = happo.log_prob_of_action(actions, gaussian).numpy()
    assert np.allclose(behaviour["behaviour_log_prob"], expected, atol=1e-3) and frozen.behaviour_arrays == (
        "log_prob",
    )

    spec = fixture_spec("discrete")
    mappo = MAPPOAgent(spec, MAPPOConfig())
    with torch.no_grad():
        mappo.actor[-1].weight.mul_(300)  # a policy far from uniform
    one = np.random.default_rng(0).normal(size=(1, 3, spec.obs_dim)).astype(np.float32)
    avail = np.ones((1, 3, spec.n_actions), bool)
    avail[0, 1, 0] = False
    probs = torch.softmax(mappo._logits(torch.from_numpy(one), torch.from_numpy(avail)), -1)[0]
    frozen = mappo.sampler()
    n = 20000
    drawn, behaviour = frozen.act(
        np.repeat(one, n, 0), np.repeat(avail, n, 0), torch.rand(n, *frozen.noise_shape, generator=g)
    )
    chosen = torch.from_numpy(drawn).long()
    assert np.allclose(behaviour["behaviour_log_prob"], probs.detach().gather(-1, chosen.T).T.log().numpy(), atol=1e-5)
    freq = torch.stack(
        [torch.bincount(torch.from_numpy(drawn[:, i]).long(), minlength=spec.n_actions) / n for i in range(3)]
    )
    assert (freq - probs).abs().max() < 0.02 and freq[1, 0] == 0


def test_mappo_policy_loss_on_hand_values():
    ratio_logs = torch.log(torch.tensor([[1.5, 0.5]]))
    loss = MAPPOAgent.policy_loss(ratio_logs, torch.zeros(1, 2), torch.tensor([1.0]), 0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)


# ----- the episode-slot schedule of a rollout ---------------------------------------------------------------


def test_slot_schedule_gives_each_ended_env_the_lowest_free_slot_and_needs_only_what_the_budget_can_use():
    slots = SlotSchedule(num_envs=3, first=10)  # resumed after 10 written episodes
    assert slots.running.tolist() == [10, 11, 12] and slots.planned.tolist() == [13, 14, 15]
    assert slots.episode_ended(1) == 11  # env 1 ran slot 11; it starts its planned slot 14 and plans 16
    assert slots.running.tolist() == [10, 14, 12] and slots.planned.tolist() == [13, 16, 15]
    assert slots.episode_ended(1) == 14 and slots.planned.tolist() == [13, 17, 15]
    assert slots.needed_for_episodes(still_needed=3).tolist() == [True, False, True]  # slots 10-12 are needed
    # transitions: slot 10 has run 4 steps, slot 12 2 steps, slots 11 and 14 ended with 5 and 3 steps
    ended = {11: 5, 14: 3}
    steps = np.array([4, 0, 2])
    # before slot 10: nothing; before 12: 4 + 5 = 9; before 16 (env 1 now): 4 + 5 + 2 + 3 + slots 13, 15 (>= 1 each)
    assert slots.needed_for_transitions(10, steps, ended).tolist() == [True, False, True]
    assert slots.needed_for_transitions(9, steps, ended).tolist() == [True, False, False]
    assert slots.needed_for_transitions(18, steps, ended).tolist() == [True, True, True]


# ----- learning, checkpoints, resume ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize(
    "task, algo, cfg_cls", [("fixture/continuous", "happo", HAPPOConfig), ("fixture/discrete", "mappo", MAPPOConfig)]
)
def test_short_training_improves_over_the_first_evaluation(task, algo, cfg_cls):
    cfg = cfg_cls(total_env_steps=12_000, num_envs=8, rollout_len=50, eval_every=6_000)
    evals = train_behaviour(resolve(task), algo, cfg).evaluations()
    first, last = evals[0]["eval"]["return"], evals[-1]["eval"]["return"]
    assert last > first + 2.0, (first, last)


@pytest.mark.slow
@pytest.mark.checkpoint
def test_checkpoint_reload_gives_identical_actions():
    run = train_behaviour(resolve("fixture/continuous"), "happo", HAPPOConfig(total_env_steps=1000, **SMALL))
    path = run.checkpoints()[-1]
    torch.load(path, weights_only=True)  # nothing but tensors and plain data inside
    a, _ = load_agent(path)
    b, _ = load_agent(path)
    obs = torch.randn(16, 3, 4)
    assert torch.equal(a.act(obs, None, True, None)[0], b.act(obs, None, True, None)[0])


@pytest.mark.slow
@pytest.mark.checkpoint
def test_interrupted_training_resumes_to_the_same_weights(home):
    ref = resolve("fixture/discrete")
    cfg = MAPPOConfig(total_env_steps=3000, **SMALL)

    class Stop(Exception):
        pass

    def stop_after_first_segment(steps, total, score):
        if score is not None and steps >= 1000:
            raise Stop

    with pytest.raises(Stop):
        train_behaviour(ref, "mappo", cfg, progress=stop_after_first_segment)
    resumed = train_behaviour(ref, "mappo", cfg)
    w_resumed = torch.load(resumed.checkpoints()[-1], weights_only=True)["weights"]
    other_home = home.parent / "other"
    import os

    os.environ["OMGMG_HOME"] = str(other_home)
    straight = train_behaviour(ref, "mappo", cfg)
    w_straight = torch.load(straight.checkpoints()[-1], weights_only=True)["weights"]
    assert all(torch.equal(w_resumed[k], w_straight[k]) for k in w_straight)


@pytest.mark.slow
@pytest.mark.checkpoint
def test_a_shorter_request_served_by_a_longer_run_reports_its_own_budget(home):
    """A run trained to 2000 steps serves a 1000-step request: the bar must read 1000/1000 and the
    score of the evaluation at 1000 steps, not 2000/1000 (200%) and the longer run's score."""
    ref = resolve("fixture/continuous")
    longer = train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=2000, **SMALL))
    at_budget = score(longer.evaluations(up_to=1000)[-1]["eval"])
    assert at_budget != score(longer.evaluations()[-1]["eval"])  # else the test could not tell them apart
    calls = []
    train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=1000, **SMALL), progress=lambda *a: calls.append(a))
    assert calls == [(1000, 1000, at_budget)]


# ----- levels end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.roundtrip
@pytest.mark.parametrize("level", ["random", "expert", "medium", "medium-replay", "medium-expert"])
def test_each_level_end_to_end(level, tmp_path):
    req = CollectRequest(
        "fixture", "continuous", level, episodes=9, train_steps=2000, workers=1, out=tmp_path / f"{level}.zarr"
    )
    ds = collect(req, on_note=lambda m: None)
    assert validate(ds.path) == []
    meta = ds.meta
    assert meta["level"] == level and meta["collection"]["level_definition"]
    if level not in ("medium-replay",):
        assert ds.n_episodes == 9
    if level in ("expert", "medium"):
        assert len(meta["behaviour_policy"]["checkpoint_sha256"]) == 64
        assert meta["behaviour_policy"]["stochastic"] is True
    if level == "random":
        assert meta["behaviour_policy"]["algorithm"] == "uniform-random"
    if level == "medium-expert":
        assert set(meta["collection"]["checkpoints"]) == {"medium", "expert"}
    # what the behaviour policy did (format 3): the tanh policy's log-density of each executed action; the
    # random level's is the uniform density of the box, -2 log 2 per agent of two entries in [-1, 1]
    assert ds.behaviour_arrays == ("log_prob",)
    assert ("uniform" if level == "random" else "squashed by tanh") in meta["collection"]["stored_action"]
    logp = ds.read("steps/behaviour_log_prob")
    assert logp.shape == (ds.n_transitions, 3) and np.isfinite(logp).all()
    if level == "random":
        assert np.allclose(logp, -2 * np.log(2))


@pytest.mark.slow
@pytest.mark.roundtrip
def test_a_clipping_behaviour_policy_stores_its_pre_clip_samples_and_their_density(tmp_path):
    req = CollectRequest(
        "fixture", "continuous", "medium", episodes=6, train_steps=2000, workers=1, out=tmp_path / "m.zarr",
        behaviour={"policy": "clip", "init_log_std": 1.0},
    )  # fmt: skip
    ds = collect(req, on_note=lambda m: None)
    assert ds.behaviour_arrays == ("log_prob", "pre_clip") and validate(ds.path) == []
    pre, actions = ds.read("steps/behaviour_pre_clip"), ds.read("steps/actions")
    assert np.array_equal(np.clip(pre, -1, 1), actions) and (np.abs(pre) > 1).any()  # some were clipped
    replay = collect(
        CollectRequest("fixture", "continuous", "medium-replay", train_steps=2000, workers=1,
                       out=tmp_path / "r.zarr", behaviour={"policy": "clip", "init_log_std": 1.0}),
        on_note=lambda m: None,
    )  # fmt: skip
    assert replay.behaviour_arrays == ("log_prob", "pre_clip") and validate(replay.path) == []


@pytest.mark.roundtrip
def test_an_independent_copy_of_a_level_shares_no_episode_and_says_so(tmp_path):
    from omgmg.datakit.coverage import compare

    def level(out, **kw):
        req = CollectRequest("fixture", "continuous", "random", episodes=20, workers=1, out=tmp_path / out, **kw)
        return collect(req, on_note=lambda m: None)

    a, again, copy = level("a.zarr"), level("b.zarr"), level("c.zarr", rollout_seed=1)
    assert compare(a, again).shared == 20  # the same seed: the same episodes
    c = compare(a, copy)
    assert c.shared == 0 and c.shared_share == (0.0, 0.0)
    assert copy.meta["collection"]["rollout_seed"] == 1 and copy.meta["collection"]["seed"] == 0
    first_seeds = {r[2] for r in a.meta["collection"]["provenance"]["episode_seeds"]}
    assert first_seeds.isdisjoint(r[2] for r in copy.meta["collection"]["provenance"]["episode_seeds"])
    with pytest.raises(ConfigError, match="medium-replay is the behaviour run's own training episodes"):
        CollectRequest("fixture", "continuous", "medium-replay", rollout_seed=1)


@pytest.mark.roundtrip
def test_transition_budget_is_exact_and_cuts_the_last_episode(tmp_path):
    ds = collect(
        CollectRequest("fixture", "continuous", "random", transitions=333, workers=1, out=tmp_path / "r.zarr"),
        on_note=lambda m: None,
    )
    assert ds.n_transitions == 333
    last = list(iter_episodes(ds))[-1]
    assert last["truncated"][-1] and not last["terminated"][-1]


@pytest.mark.slow
@pytest.mark.roundtrip
def test_same_seed_and_budget_give_identical_bytes(tmp_path):
    a = collect(
        CollectRequest(
            "fixture", "discrete", "expert", episodes=12, train_steps=1000, workers=1, out=tmp_path / "a.zarr"
        ),
        on_note=lambda m: None,
    )
    b = collect(
        CollectRequest(
            "fixture", "discrete", "expert", episodes=12, train_steps=1000, workers=1, out=tmp_path / "b.zarr"
        ),
        on_note=lambda m: None,
    )
    for key in ("steps/obs", "steps/actions", "steps/avail", "steps/reward", "episodes/won"):
        assert np.array_equal(a.read(key), b.read(key)), key
    c = collect(
        CollectRequest(
            "fixture", "discrete", "expert", episodes=12, train_steps=1000, workers=1, seed=1, out=tmp_path / "c.zarr"
        ),
        on_note=lambda m: None,
    )
    assert not np.array_equal(a.read("steps/obs"), c.read("steps/obs"))


class RaggedEnv(MultiAgentEnv):
    """Episodes of 1-12 steps, their length drawn at reset: envs finish at different times."""

    spec = fixture_spec("continuous")

    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t, self.length = 0, int(self.rng.integers(1, 13))
        return Reset(*self._out())

    def _out(self):
        obs = self.rng.normal(size=(3, self.spec.obs_dim)).astype(np.float32)
        for i, dim in enumerate(self.spec.obs_dims):
            obs[i, dim:] = 0  # padding
        return obs, self.rng.normal(size=self.spec.state_dim).astype(np.float32), None

    def step(self, actions):
        self.t += 1
        obs, state, _ = self._out()
        return Step(obs, state, None, float(actions.sum()), self.t == self.length, False, {})


@pytest.mark.slow
@pytest.mark.roundtrip
def test_kept_episodes_depend_on_seeds_and_budget_only(tmp_path, monkeypatch):
    """Each episode comes from its own seed, so a smaller budget keeps a prefix of a larger one,
    and neither the number of envs (which run episodes of 1-12 steps out of step with each other)
    nor a worker process changes anything."""

    def run(name, until, envs):
        writer = DatasetWriter(tmp_path / name, RaggedEnv.spec, behaviour_arrays=("log_prob",))
        vec = SerialVectorEnv(RaggedEnv, envs)
        rollout_episodes(writer, random_policy(RaggedEnv.spec), vec, phase=0, until=until, seed=3)
        vec.close()
        return writer.close()

    small = run("s.zarr", ("episodes", 7), 4)
    large = run("l.zarr", ("episodes", 60), 4)
    other = run("o.zarr", ("episodes", 60), 7)
    cut = run("c.zarr", ("transitions", 101), 4)
    assert small.n_episodes == 7 and large.n_episodes == 60 and cut.n_transitions == 101
    lengths = large.read("episodes/length")
    assert np.array_equal(small.read("episodes/length"), lengths[:7]) and len(np.unique(lengths)) > 5
    for key in ("steps/obs", "steps/actions", "steps/reward"):
        assert np.array_equal(small.read(key), large.read(key, 0, small.n_transitions)), key
        assert np.array_equal(cut.read(key), large.read(key, 0, 101)), key
        assert np.array_equal(other.read(key), large.read(key)), key
    # a worker process really runs here: the fixture suite's own rule would keep its envs in this process
    monkeypatch.setattr("omgmg.collectors.collect.worthwhile_workers", lambda ref, requested: requested)
    fixture = [
        collect(
            CollectRequest(
                "fixture", "continuous", "random", episodes=9, num_envs=3, workers=w, out=tmp_path / f"w{w}.zarr"
            ),
            on_note=lambda m: None,
        )
        for w in (1, 2)
    ]
    assert np.array_equal(fixture[0].read("steps/obs"), fixture[1].read("steps/obs"))


class PartedVectorEnv(VectorEnv):
    """RaggedEnvs in separately stepped parts (as SMAX's batches): ``groups()`` gives one per part."""

    def __init__(self, sizes):
        self.parts = [SerialVectorEnv(RaggedEnv, n) for n in sizes]
        self.spec, self.num_envs = RaggedEnv.spec, sum(sizes)
        bounds = np.cumsum([0, *sizes])
        self.rows = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def reset(self, seed):
        parts = [p.reset(seed + rows.start) for p, rows in zip(self.parts, self.rows)]
        return Reset(np.concatenate([r.obs for r in parts]), np.concatenate([r.state for r in parts]), None)

    def step(self, actions, active=None, reseed=None):
        raise AssertionError("a rollout steps the parts, not the whole env")

    def groups(self):
        return [EnvGroup(rows, p.step_async, p.step_wait) for p, rows in zip(self.parts, self.rows)]


@pytest.mark.slow
@pytest.mark.roundtrip
def test_rollout_pipelines_parts_without_changing_the_data(tmp_path):
    """Stepping the envs in parts (one steps while the next is recorded and acted for; a part with no
    needed env is not stepped) gives the dataset one batch of the same envs gives."""

    def run(name, vec, until):
        writer = DatasetWriter(tmp_path / name, RaggedEnv.spec, behaviour_arrays=("log_prob",))
        rollout_episodes(writer, random_policy(RaggedEnv.spec), vec, phase=0, until=until, seed=3)
        return writer.close()

    for until in (("episodes", 45), ("transitions", 230)):
        whole = run(f"w{until[0]}.zarr", SerialVectorEnv(RaggedEnv, 7), until)
        parted = run(f"p{until[0]}.zarr", PartedVectorEnv([3, 1, 3]), until)
        assert parted.n_episodes == whole.n_episodes and parted.n_transitions == whole.n_transitions
        for key in ("steps/obs", "steps/actions", "steps/reward", "steps/truncated", "episodes/length"):
            assert np.array_equal(parted.read(key), whole.read(key)), (until, key)


@pytest.mark.slow
@pytest.mark.roundtrip
def test_interrupted_collection_resumes_to_the_same_dataset(tmp_path):
    base = dict(episodes=40, workers=1, train_steps=1000, num_envs=4)
    reference = collect(
        CollectRequest("fixture", "continuous", "medium-expert", out=tmp_path / "ref.zarr", **base),
        on_note=lambda m: None,
    )

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def interrupt(done, total):
        calls["n"] += 1
        if calls["n"] == 27:  # inside the expert half, in its second round
            raise Stop

    target = tmp_path / "x.zarr"
    with pytest.raises(Stop):
        collect(
            CollectRequest("fixture", "continuous", "medium-expert", out=target, **base),
            on_note=lambda m: None,
            on_rollout=interrupt,
        )
    assert not target.exists()
    resumed = collect(
        CollectRequest("fixture", "continuous", "medium-expert", out=target, **base), on_note=lambda m: None
    )
    for key in ("steps/obs", "steps/actions", "steps/reward", "steps/truncated", "episodes/length"):
        assert np.array_equal(resumed.read(key), reference.read(key)), key


# ----- the command ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["fixture", "nope", "--level", "random"], "unknown fixture task 'nope'"),
        (["fixture", "continuous", "--level", "superb"], "unknown level 'superb'"),
        (["fixture", "continuous", "--level", "random", "--episodes", "0"], "episodes must be a positive number"),
        (["smacv2", "protoss_5v5", "--level", "random", "--backend", "pysc2"], "unknown SMACv2 backend 'pysc2'"),
        (["fixture", "continuous", "--level", "random", "--episodes", "3", "--transitions", "9"], "not both"),
    ],
)
def test_collect_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(data_cli, ["collect", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.roundtrip
def test_collect_command_writes_a_valid_dataset_and_never_overwrites(tmp_path):
    out = tmp_path / "c.zarr"
    args = [
        "collect",
        "fixture",
        "discrete",
        "--level",
        "m-expert",
        "--episodes",
        "6",
        "--train-steps",
        "800",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(data_cli, args)
    assert result.exit_code == 0, result.output
    assert "6 episodes" in result.output and "win rate" in result.output
    assert open_dataset(out).level == "medium-expert"
    before = open_dataset(out).read("steps/obs")
    again = CliRunner().invoke(data_cli, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert np.array_equal(open_dataset(out).read("steps/obs"), before)
    with pytest.raises(DatasetError):
        CollectRequest("fixture", "discrete", "expert", medium_fraction=1.5)
    assert math.isfinite(open_dataset(out).meta["stats"]["return"]["mean"])
