"""OMGMG (Eqs. 9-12, Algorithm 1), BC, the trainer, checkpoints and the `omgmg` command."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fixture_datasets

from omgmg.algos.bc import BCConfig
from omgmg.algos.omgmg import (
    OMGMGConfig,
    advantage_exponent,
    gmg_target,
    implicit_value_loss,
    moderate_generalization_actor_loss,
)
from omgmg.cli.train import main as train_cli
from omgmg.collectors.fixtures import make_fixture
from omgmg.datakit import TransitionLoader
from omgmg.datakit.loader import Batch
from omgmg.nets import mix
from omgmg.rundir import load_policy, read_log, run_dataset
from omgmg.trainer import build, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_datasets(tmp_path_factory.mktemp("omgmg"))


def small(**kw) -> OMGMGConfig:
    return OMGMGConfig(**{"hidden": 32, "mixer_hidden": 16, "batch_size": 32, "torch_threads": 1, **kw})


def batch(algo, ds, seed=0, size=32) -> Batch:
    return algo.prepare(TransitionLoader(ds, size, seed=seed).sample_members())  # (1, B, ...): one member


# ----- the losses, by hand -------------------------------------------------------------------------------------


def test_eq11_value_loss_on_hand_values():
    w = torch.tensor([[1.0, 2.0]])
    q_bar = torch.tensor([[3.0, 1.0]])
    v = torch.tensor([[1.0, 2.0]])
    z = advantage_exponent(w, q_bar, v, alpha=2.0, clip=10.0)
    assert torch.allclose(z, torch.tensor([[1.0, -1.0]]))  # w (Qbar - V) / alpha
    loss = implicit_value_loss(z, w, v, alpha=2.0)
    max_z = 1.0  # the stabiliser: divide by exp(max z)
    by_hand = (
        math.exp(1 - max_z) + math.exp(-max_z) * 1 * 1 / 2 + math.exp(-1 - max_z) + math.exp(-max_z) * 2 * 2 / 2
    ) / 2
    assert loss.item() == pytest.approx(by_hand)
    # without the stabiliser the loss is exp(max z) times larger: same minimiser
    raw = (torch.exp(z) + w * v / 2).mean()
    assert raw.item() == pytest.approx(by_hand * math.exp(max_z))
    assert advantage_exponent(w, q_bar * 100, v, 2.0, 10.0).max().item() == 10.0  # clamped as OMIGA


def test_eq12_target_on_hand_values_and_lambda_zero_is_the_in_sample_target():
    r, term = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    w, b = torch.tensor([[0.5, 2.0], [0.5, 2.0]]), torch.tensor([0.1, 0.1])
    q_next, v_next = torch.tensor([[4.0, 2.0], [4.0, 2.0]]), torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    t = gmg_target(r, term, w, b, q_next, v_next, gamma=0.9, lam=0.25)
    q_tot, v_tot = 0.5 * 4 + 2 * 2 + 0.1, 0.5 * 2 + 2 * 1 + 0.1
    assert t[0].item() == pytest.approx(1 + 0.9 * (0.25 * q_tot + 0.75 * v_tot))
    assert t[1].item() == pytest.approx(1.0)  # terminated: no bootstrap
    t0 = gmg_target(r, term, w, b, q_next * 1000, v_next, gamma=0.9, lam=0.0)
    assert t0[0].item() == pytest.approx(1 + 0.9 * v_tot)  # lambda = 0: r + gamma V_tot(s'), Q ignored


def test_eq10_actor_loss_on_hand_values():
    q_pi = torch.tensor([[2.0, 4.0]])
    logp = torch.tensor([[-1.0, -2.0]])
    weight = torch.tensor([[1.0, 0.5]])
    loss = moderate_generalization_actor_loss(q_pi, logp, weight, nu=0.1)
    assert loss.item() == pytest.approx(-(3.0 + 0.1 * (-1.0 - 1.0) / 2))


def test_eq9_mixer_weights_are_non_negative_and_shared_by_q_and_v(data):
    algo = build("omgmg", data["continuous"], small())
    w, b = algo.mixer(torch.randn(1, 64, algo.spec.state_dim) * 5)
    assert (w >= 0).all() and w.shape == (1, 64, 3) and b.shape == (1, 64)
    assert torch.allclose(mix(w, torch.ones(1, 64, 3), b), w.sum(-1) + b)


def test_discrete_expectations_are_exact_over_available_actions(data):
    algo = build("omgmg", data["discrete"], small())
    b = batch(algo, data["discrete"])
    with torch.no_grad():
        got = algo._expected_next_q_discrete(b.next_obs, b.next_avail)
        logits = algo.actor_target.net(b.next_obs).masked_fill(~b.next_avail, -torch.inf)
        probs = torch.softmax(logits, -1)
        want = (probs * algo.q_target(b.next_obs)).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)
    assert (probs[~b.next_avail] == 0).all()


# ----- Algorithm 1's update ----------------------------------------------------------------------------------------


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_each_update_moves_only_its_own_networks(data, kind):
    algo = build("omgmg", data[kind], small())
    b = batch(algo, data[kind])
    with torch.no_grad():
        q_bar, next_q = algo._target_q_values(b)
    groups = {
        "v": algo.v,
        "q": algo.q,
        "mixer": algo.mixer,
        "actor": algo.actor,
        "q_target": algo.q_target,
        "actor_target": algo.actor_target,
    }
    snaps = {k: _snapshot(m) for k, m in groups.items()}
    z, _ = algo.update_v(b, q_bar)
    moved = {k for k, m in groups.items() if _changed(snaps[k], m)}
    assert moved == {"v"}
    snaps = {k: _snapshot(m) for k, m in groups.items()}
    algo.update_q(b, next_q)
    assert {k for k, m in groups.items() if _changed(snaps[k], m)} == {"q", "mixer"}
    snaps = {k: _snapshot(m) for k, m in groups.items()}
    for p in algo.q.parameters():  # clear the Q step's own gradients, then look for any from the actor
        p.grad = None
    algo.update_actor(b, z)
    assert {k for k, m in groups.items() if _changed(snaps[k], m)} == {"actor"}
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in algo.q.parameters())  # no leak into Q
    snaps = {k: _snapshot(m) for k, m in groups.items()}
    algo.update_targets()
    assert {k for k, m in groups.items() if _changed(snaps[k], m)} == {"q_target", "actor_target"}


def test_truncation_bootstraps_and_termination_does_not_in_the_update(data):
    algo = build("omgmg", data["continuous"], small(lam=0.5))
    b = batch(algo, data["continuous"], size=8)
    seen = {}
    real = gmg_target

    def spy(reward, terminated, *args, **kw):
        out = real(reward, terminated, *args, **kw)
        seen["terminated"], seen["target"], seen["reward"] = terminated, out, reward
        return out

    import omgmg.algos.omgmg as mod

    b.terminated[0] = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
    b.truncated[0] = torch.tensor([0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float32)
    mod.gmg_target, orig = spy, mod.gmg_target
    try:
        with torch.no_grad():
            _, next_q = algo._target_q_values(b)
        algo.update_q(b, next_q)
    finally:
        mod.gmg_target = orig
    t, r = seen["target"][0], b.reward[0]
    assert torch.equal(t[[0, 2]], r[[0, 2]])  # terminations: target is the reward alone
    assert not torch.isclose(t[1], r[1])  # the truncated step still bootstraps


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_two_hundred_steps_lower_the_q_loss(data, kind):
    torch.manual_seed(0)
    algo = build("omgmg", data[kind], small(lr=1e-3))
    loader = TransitionLoader(data[kind], 64, seed=0)
    losses = [float(algo.update(algo.prepare(loader.sample_members()))["loss/q"]) for _ in range(200)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))


@pytest.mark.learning
def test_separate_and_shared_networks_both_train(data):
    for shared in (True, False):
        algo = build("omgmg", data["discrete"], small(shared_networks=shared))
        stats = algo.update(batch(algo, data["discrete"]))
        assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.learning
def test_bc_learns_the_dataset_actions(data):
    # the continuous fixture's behaviour is a linear controller plus noise: its likelihood can rise a lot
    algo = build("bc", data["continuous"], BCConfig(hidden=32, torch_threads=1, lr=1e-3))
    loader = TransitionLoader(data["continuous"], 64, seed=0)
    losses = [float(algo.update(algo.prepare(loader.sample_members()))["loss/actor"]) for _ in range(200)]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.5, (np.mean(losses[:20]), np.mean(losses[-20:]))


# ----- trainer, checkpoints, resume, command -------------------------------------------------------------------


@pytest.mark.checkpoint
def test_checkpoint_reload_gives_identical_actions(data, tmp_path):
    res = train(
        "omgmg", data["continuous"], small(steps=60, eval_every=30, eval_episodes=2, log_every=20), tmp_path / "r"
    )
    torch.load(res.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    a, b = (
        load_policy(res.run_dir / "checkpoints" / "latest.pt"),
        load_policy(res.run_dir / "checkpoints" / "latest.pt"),
    )
    obs = torch.randn(1, 20, 3, 4)  # (M, E, N, O)
    assert torch.equal(a.act(a.normalise_obs(obs), None), b.act(b.normalise_obs(obs), None))
    assert torch.equal(a.obs_mean, b.obs_mean) and a.obs_std.abs().sum() > 0
    assert (res.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert res.final["eval/return"] is not None


@pytest.mark.slow
@pytest.mark.checkpoint
def test_resume_continues_the_same_metrics_stream(data, tmp_path):
    cfg = small(steps=120, eval_every=40, eval_episodes=2, log_every=20)
    straight = train("omgmg", data["discrete"], cfg, tmp_path / "a")

    class Stop(Exception):
        pass

    def stop(step, total, ev):
        if ev is not None and step == 80:
            raise Stop

    with pytest.raises(Stop):
        train("omgmg", data["discrete"], cfg, tmp_path / "b", progress=stop)
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # a line written after the checkpoint, then a crash
        f.write(json.dumps({"step": 100, "loss/q": 123.0}) + "\n")
    resumed = train("omgmg", data["discrete"], cfg, tmp_path / "b")
    drop = lambda log: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in log]  # noqa: E731
    assert drop(read_log(resumed.run_dir)) == drop(read_log(straight.run_dir))


@pytest.mark.roundtrip
def test_a_run_directory_refuses_another_dataset_or_config(data, tmp_path):
    from omgmg.datakit import DatasetError

    cfg = BCConfig(steps=10, eval_every=10, eval_episodes=1, hidden=16)
    train("bc", data["discrete"], cfg, tmp_path / "r")
    with pytest.raises(DatasetError, match="a run on a dataset of another task"):
        train("bc", data["continuous"], cfg, tmp_path / "r")
    same_task = make_fixture(tmp_path / "other.zarr", "discrete", episodes=40, seed=1)  # same task, other data
    with pytest.raises(DatasetError, match="a run on other data than .*other.zarr"):
        train("bc", same_task, cfg, tmp_path / "r")
    with pytest.raises(DatasetError, match=r"other hyperparameters \(hidden: 16 there vs 8 now\)"):
        train("bc", data["discrete"], BCConfig(steps=10, eval_every=10, eval_episodes=1, hidden=8), tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    # untouched by the refused runs; named relative to the run directory, not by this machine's absolute path
    assert config["dataset"] == os.path.relpath(data["discrete"].path, tmp_path / "r")
    assert config["dataset_relative_to"] == "run directory"
    assert run_dataset(tmp_path / "r", config) == data["discrete"].path.absolute()


def test_per_suite_defaults_apply_where_the_user_sets_nothing():
    from omgmg.algos import make_config
    from omgmg.algos.omgmg import SUITE_DEFAULTS

    assert make_config("omgmg", "mamujoco").nu == SUITE_DEFAULTS["mamujoco"]["nu"]
    assert make_config("omgmg", "mamujoco", nu=0.3).nu == 0.3  # an explicit option wins
    assert make_config("omgmg", "fixture").nu == OMGMGConfig().nu  # no row: the dataclass default
    assert make_config("bc", "mamujoco") == BCConfig()


@pytest.mark.roundtrip
def test_command_trains_evaluates_and_refuses_bad_options(data, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        str(data["discrete"].path),
        "--out",
        str(run),
        "--steps",
        "40",
        "--eval-every",
        "20",
        "--eval-episodes",
        "2",
        "--hidden",
        "16",
        "--lam",
        "0.9",
        "--nu",
        "0.1",
    ]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    assert "final" in result.output and "win rate" in result.output
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["lam"] == 0.9 and cfg["nu"] == 0.1
    result = CliRunner().invoke(train_cli, ["eval", str(run), "--episodes", "2"])
    assert result.exit_code == 0 and "win rate" in result.output and "optimistic" not in result.output
    assert json.loads((run / "eval-final.json").read_text())["checkpoint"] == "final"  # the default: no selection
    best = CliRunner().invoke(train_cli, ["eval", str(run), "--episodes", "2", "--checkpoint", "best"])
    assert best.exit_code == 0 and "selected on training's evaluation returns" in best.output
    bad = CliRunner().invoke(
        train_cli, ["train", "--dataset", str(data["discrete"].path), "--algo", "bc", "--lam", "0.3"]
    )
    assert bad.exit_code == 2 and "--lam does not apply to bc" in bad.output
    bad = CliRunner().invoke(train_cli, ["train", "--dataset", str(data["discrete"].path), "--lam", "1.5"])
    assert bad.exit_code == 2 and "lam must lie in [0, 1]" in bad.output
    bad = CliRunner().invoke(train_cli, ["train", "--dataset", str(tmp_path / "none.zarr")])
    assert bad.exit_code == 1 and "no dataset at" in bad.output


def test_value_targets_option_bootstraps_from_target_copies_of_v_and_the_mixer(data):
    algo = build("omgmg", data["continuous"], small(value_targets=True, lam=0.0))
    b = batch(algo, data["continuous"], size=16)
    with torch.no_grad():  # make the online V and mixer differ from their targets
        for p in [*algo.v.parameters(), *algo.mixer.parameters()]:
            p.add_(0.5)
    seen = {}
    import omgmg.algos.omgmg as mod

    real = mod.gmg_target

    def spy(reward, terminated, next_w, next_b, next_q, next_v, gamma, lam):
        seen.update(next_w=next_w, next_v=next_v)
        return real(reward, terminated, next_w, next_b, next_q, next_v, gamma, lam)

    mod.gmg_target = spy
    try:
        _, next_q = algo._target_q_values(b)
        algo.update_q(b, next_q)
    finally:
        mod.gmg_target = real
    with torch.no_grad():
        assert torch.allclose(seen["next_v"], algo.v_target(b.next_obs)[..., 0])
        assert torch.allclose(seen["next_w"], algo.mixer_target(b.next_state)[0])
        assert not torch.allclose(seen["next_v"], algo.v(b.next_obs)[..., 0])
    before = {k: v.clone() for k, v in algo.v_target.state_dict().items()}
    algo.update_targets()
    assert any(not torch.equal(before[k], v) for k, v in algo.v_target.state_dict().items())
