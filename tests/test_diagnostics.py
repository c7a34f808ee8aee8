"""The diagnostics logged beside the losses: right numbers, and no effect on training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import fixture_datasets, small_config

from omgmg.algos import algorithm_class
from omgmg.datakit import TransitionLoader, iter_episodes
from omgmg.diagnostics import action_distance, actions_on_bounds, divergence_bound, grad_norm, returns_to_go
from omgmg.nets import MemberLinear
from omgmg.trainer import train


def test_returns_to_go_are_each_transitions_discounted_rest_of_its_episode(continuous_data):
    ds, _ = continuous_data
    rtg = returns_to_go(ds, 0.9)
    expected = []
    for ep in iter_episodes(ds):
        r = ep["reward"].astype(np.float64)
        expected += [sum(0.9**k * x for k, x in enumerate(r[t:])) for t in range(len(r))]
    assert rtg.shape == (ds.n_transitions,) and np.allclose(rtg, expected, rtol=1e-5)
    assert divergence_bound(rtg) == pytest.approx(2 * np.abs(expected).max(), rel=1e-5)


def test_actions_on_bounds_counts_each_agents_own_entries_only():
    low, high = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]), torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # agent 1 has one action entry: its second is padding
    actions = torch.tensor([[[1.0, 0.3], [-0.5, 0.0]], [[0.2, -2.0], [0.1, 0.0]]])  # (B=2, N=2, A=2)
    interior = torch.zeros_like(actions)
    shares = actions_on_bounds(torch.stack([actions, interior]), low, high, mask)  # two members
    assert shares.tolist() == pytest.approx([3 / 6, 0.0])  # each member's own share


def test_grad_norm_is_each_members_norm_backward_would_give_and_leaves_grads_alone():
    net = MemberLinear(2, 3, 2)  # two members
    losses = (net(torch.randn(2, 5, 3)) ** 2).sum((1, 2))  # (M,)
    norm = grad_norm(losses, net)
    assert all(p.grad is None for p in net.parameters())
    for k in range(2):
        for p in net.parameters():
            p.grad = None
        losses[k].backward(retain_graph=True)
        want = torch.sqrt(sum((p.grad[k] ** 2).sum() for p in net.parameters()))
        assert float(norm[k]) == pytest.approx(float(want), rel=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_datasets(tmp_path_factory.mktemp("diag"), continuous=10, discrete=10)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_omgmg_logs_its_diagnostics_every_log_every_steps(data, tmp_path, kind):
    cfg = small_config("omgmg", steps=40, log_every=20, eval_every=40)
    train("omgmg", data[kind], cfg, tmp_path / "run", evaluate=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    records = [r for r in logged if "loss/q" in r]
    assert [r["step"] for r in records] == [20, 40]
    for r in records:
        assert 0 <= r["value/z_at_clip"] <= 1 and r["policy/grad_q_term"] >= 0 and r["policy/grad_bc_term"] > 0
        assert np.isclose(r["value/q_tot_over_mc"], r["value/q_tot_batch"] - r["value/mc_return"])
        assert ("policy/actions_on_bounds" in r) == (kind == "continuous")


def test_diagnostics_change_nothing_training_does(data, tmp_path):
    """The same run logged every step and every 50 steps ends with the same parameters."""
    params = []
    for every in (1, 50):
        cfg = small_config("omgmg", steps=50, log_every=every, eval_every=50)
        train("omgmg", data["continuous"], cfg, tmp_path / f"run{every}", evaluate=False)
        state = torch.load(tmp_path / f"run{every}" / "checkpoints" / "latest.pt", weights_only=True)["weights"]
        params.append(state)
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0] if isinstance(params[0][k], torch.Tensor))


def test_a_batch_carries_its_rows_so_diagnostics_find_their_returns(data):
    ds = data["continuous"]
    steps_reward = ds.read("steps/reward", 0, ds.n_transitions)
    for streaming in (False, True):
        loader = TransitionLoader(ds, 16, seed=0, streaming=streaming, block_rows=64, resident_blocks=2)
        for _ in range(20):
            b = loader.sample_members()
            assert torch.equal(b.reward, torch.from_numpy(steps_reward[b.index.numpy()]))
    algo = algorithm_class("bc")(ds.spec, small_config("bc"))
    assert algo.q_tot(b) is None and "value/q_tot_batch" not in algo.diagnostics(b, torch.zeros(1, 16))


def test_censored_bound_actions_score_the_mass_beyond_the_edge_and_stay_bounded():
    import math

    from omgmg.nets import CENSOR_EDGE, TanhGaussianPolicy

    box = (np.full((1, 2), -1, np.float32), np.ones((1, 2), np.float32), np.ones((1, 2), np.float32))
    plain = TanhGaussianPolicy(1, 1, 3, 2, *box)
    censored = TanhGaussianPolicy(1, 1, 3, 2, *box, censor_bounds=True)
    mean, log_std = torch.tensor([[[[0.3, 7.0]]]]), torch.tensor([[[[-0.5, -5.0]]]])
    interior = torch.tensor([[[[0.2, -0.4]]]])
    assert torch.equal(plain._log_prob_data(mean, log_std, interior), censored._log_prob_data(mean, log_std, interior))
    on_bounds = torch.tensor([[[[-1.0, 1.0]]]])  # entry 0 on its low bound, entry 1 on its high bound
    got = censored._log_prob_data(mean, log_std, on_bounds)
    std = log_std.exp()[0, 0, 0]
    want = math.log(0.5 * math.erfc((0.3 + CENSOR_EDGE) / std[0] / math.sqrt(2))) + math.log(
        0.5 * math.erfc((CENSOR_EDGE - 7.0) / std[1] / math.sqrt(2))
    )
    assert got.item() == pytest.approx(want, rel=1e-5)
    # mean at atanh(1 - 1e-6), std e^-5: the density there grows without bound as the std shrinks; the mass is <= 0
    peak, tiny = torch.full((1, 1, 1, 2), math.atanh(1 - 1e-6)), torch.full((1, 1, 1, 2), -5.0)
    high = torch.ones(1, 1, 1, 2)
    assert plain._log_prob_data(peak, tiny, high).item() > 30
    assert -1e-6 < censored._log_prob_data(peak, tiny, high).item() <= 0
    far = torch.tensor([[[[9.0, 9.0]]]], requires_grad=True)
    censored._log_prob_data(far, torch.zeros(1, 1, 1, 2), high).sum().backward()
    assert far.grad.abs().max() < 1e-3  # mass beyond the edge already there: nothing left to pull


# ----- the mechanism: where the policy's actions sit against the data's ------------------------------------------


def test_action_distance_is_the_rms_over_own_entries_in_units_of_the_range():
    low, high = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]), torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    data = torch.zeros(1, 1, 2, 2)
    policy = torch.tensor([[[[1.0, 2.0], [0.5, 9.0]]]])  # agent 0: 1/2 and 2/4 of its ranges; agent 1: 0.5/1
    d = action_distance(policy, data, low, high, mask)
    assert d.tolist() == pytest.approx([(0.5 + 0.5) / 2])  # the padding entry (9.0) does not count


@pytest.mark.slow
@pytest.mark.parametrize("task, level", [("continuous", "medium"), ("discrete", "medium"), ("continuous", "random")])
def test_the_behaviour_density_agrees_with_what_the_collector_recorded(tmp_path, monkeypatch, task, level):
    from omgmg.behaviour import behaviour_density
    from omgmg.collectors.collect import CollectRequest, collect

    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    ds = collect(
        CollectRequest("fixture", task, level, episodes=8, train_steps=1000, workers=1, out=tmp_path / "d.zarr"),
        on_note=lambda m: None,
    )
    density = behaviour_density(ds)
    obs, actions = (torch.from_numpy(ds.read(k)) for k in ("steps/obs", "steps/actions"))
    avail = torch.from_numpy(ds.read("steps/avail")) if ds.spec.discrete else None
    recorded = ds.read("steps/behaviour_log_prob")
    assert np.allclose(density(obs, actions, avail).numpy(), recorded, atol=2e-3)  # tanh: atanh of tanh
    # gone from $OMGMG_HOME (or changed): no density, and training says nothing of it
    if level != "random":
        import shutil

        shutil.rmtree(tmp_path / "home" / "runs")
        assert behaviour_density(ds) is None


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["omgmg", "omiga", "bc"])
def test_the_mechanism_is_logged_for_omgmg_omiga_and_bc_their_yardstick(tmp_path, monkeypatch, algo):
    from omgmg.collectors.collect import CollectRequest, collect
    from omgmg.rundir import read_log

    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    ds = collect(
        CollectRequest("fixture", "continuous", "medium", episodes=8, train_steps=1000, workers=1,
                       out=tmp_path / "d.zarr"),
        on_note=lambda m: None,
    )  # fmt: skip
    cfg = small_config(algo, steps=20, log_every=10, eval_every=20, eval_episodes=1)
    train(algo, ds, cfg, tmp_path / "run")
    logged = [r for r in read_log(tmp_path / "run") if "policy/action_distance" in r]
    assert len(logged) == 2
    for r in logged:
        assert 0 < r["policy/action_distance"] < 1
        assert np.isfinite(r["policy/behaviour_log_prob"]) and np.isfinite(r["policy/behaviour_log_prob_data"])
    assert (tmp_path / "run" / "curves.png").exists()
