"""The baselines (MABCQ, MACQL, ICQ, OMAR, OMIGA, ComaDICE, and BC): losses by hand, learning on tiny
data, gradient isolation between critic and actor steps, checkpoints, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fixture_datasets, small_config

from omgmg.algos import ALGORITHMS, algorithm_class
from omgmg.algos.comadice import dice_nu_loss, ratio_weighted_actor_loss, soft_chi2_dual, soft_chi2_ratio
from omgmg.algos.icq import batch_softmax_weights, discounted_top_weight, icq_actor_loss, icq_target
from omgmg.algos.mabcq import allowed_actions, soft_clipped_double_q, vae_loss
from omgmg.algos.macql import conservative_penalty
from omgmg.algos.omar import cem_search, omar_actor_loss
from omgmg.algos.omiga import omiga_q_target, weighted_likelihood_actor_loss
from omgmg.cli.train import main as train_cli
from omgmg.datakit import TransitionLoader
from omgmg.members import MemberRandom
from omgmg.rundir import load_policy
from omgmg.trainer import build, train

BASELINES = ("mabcq", "macql", "icq", "omar", "omiga", "comadice")
CASES = [(a, k) for a in BASELINES for k in ("continuous", "discrete")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_datasets(tmp_path_factory.mktemp("baselines"))


small = small_config


def test_every_algorithm_is_registered():
    assert set(ALGORITHMS) == {"bc", "mabcq", "macql", "icq", "omar", "omiga", "comadice", "omgmg"}
    with pytest.raises(ValueError, match="choose one of bc, mabcq"):
        algorithm_class("sac")


# ----- losses on hand values --------------------------------------------------------------------------------------


def test_bcq_pieces_by_hand():
    q1, q2 = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
    assert torch.allclose(soft_clipped_double_q(q1, q2, 0.75), torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 4]))
    probs = torch.tensor([[0.5, 0.1, 0.2, 0.2]])
    avail = torch.tensor([[True, True, True, False]])
    # relative probabilities 1, 0.2, 0.4, 0.4: above 0.3 and available -> actions 0 and 2
    assert allowed_actions(probs, avail, 0.3).tolist() == [[True, False, True, False]]
    a = torch.tensor([[[[0.5, -0.5]]]])  # (M, B, N, A)
    zero = torch.zeros(1, 1, 1, 2)
    assert vae_loss(a, a, zero, zero).item() == pytest.approx(0.0)  # perfect reconstruction, prior latent
    mean = torch.ones(1, 1, 1, 2)
    assert vae_loss(a, a, mean, zero).item() == pytest.approx(0.5 * 0.5 * 2)  # KL = 0.5 * sum(mean^2)


def test_cql_penalty_by_hand():
    q = torch.tensor([[[[1.0, 2.0, -torch.inf]]]])  # (M, B, N, C): an unavailable action contributes nothing
    q_data = torch.tensor([[[2.0]]])
    assert conservative_penalty(q, q_data).item() == pytest.approx(math.log(math.e + math.e**2) - 2.0)


def test_icq_weights_and_target_by_hand():
    x = torch.tensor([[0.0, math.log(3.0)]])  # (M, B): the softmax is over each member's batch
    assert torch.allclose(batch_softmax_weights(x, 1.0), torch.tensor([[0.5, 1.5]]))  # B * softmax: mean 1
    r, ends, q_next = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, math.log(3.0)]])
    y = icq_target(r, ends, q_next, gamma=0.5, beta=1.0)[0]
    assert y[0].item() == pytest.approx(1.0 + 0.5 * 0.5 * 0.0) and y[1].item() == pytest.approx(1.0)
    assert discounted_top_weight(q_next, gamma=0.5, beta=1.0).tolist() == pytest.approx([0.75])  # 0.5 * 1.5
    # a batch whose Q_tot spreads over 20 (SMACv2's scale): beta 10 lets gamma * the top weight pass 1, beta 1000 not
    spread = torch.linspace(0.0, 20.0, 128)[None]
    assert discounted_top_weight(spread, 0.99, 10.0).item() > 1.0 > discounted_top_weight(spread, 0.99, 1000.0).item()
    w = torch.tensor([[[2.0], [2.0]]])
    adv = torch.tensor([[[0.0], [math.log(3.0)]]])
    logp = torch.tensor([[[-1.0], [-2.0]]])
    assert icq_actor_loss(w, adv, logp, alpha=1.0).item() == pytest.approx(-(2 * 0.5 * -1 + 2 * 1.5 * -2) / 2)
    # two members with their own temperatures: each member's weights are its own softmax
    two = batch_softmax_weights(torch.cat([x, x]), torch.tensor([1.0, 1e6]))
    assert torch.allclose(two, torch.tensor([[0.5, 1.5], [1.0, 1.0]]), atol=1e-5)


def test_omar_actor_loss_and_cem_by_hand():
    q_pi = torch.tensor([[[2.0]]])
    pi, target = torch.tensor([[[[0.0, 0.0]]]]), torch.tensor([[[[0.3, 0.4]]]])
    assert omar_actor_loss(q_pi, pi, target, coe=0.7).item() == pytest.approx(0.3 * -2.0 + 0.7 * 0.25)
    peak = torch.tensor([0.5, -0.25])
    best, value = cem_search(
        lambda u: -((u - peak) ** 2).sum(-1), (64, 2), 2, iters=2, samples=20, elites=5, init_std=2.0,
        rng=MemberRandom.seeded([0, 1]),
    )  # fmt: skip
    assert best.shape == (2, 64, 2, 2) and value.shape == (2, 64, 2)
    assert (best - peak).norm(dim=-1).median() < 0.25  # two rounds of 20 land near the peak
    assert torch.allclose(value, -((best - peak) ** 2).sum(-1))


def test_omiga_pieces_by_hand():
    r, term = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    w, b = torch.tensor([[1.0, 2.0]] * 2), torch.tensor([0.5, 0.5])
    v = torch.tensor([[1.0, 1.0]] * 2)
    y = omiga_q_target(r, term, w, b, v, gamma=0.9)
    assert y.tolist() == pytest.approx([1 + 0.9 * 3.5, 1.0])
    assert weighted_likelihood_actor_loss(
        torch.tensor([[2.0, 1.0]]), torch.tensor([[-1.0, -3.0]])
    ).item() == pytest.approx(-(2 * -1 + 1 * -3) / 2)


def test_omiga_keeps_its_own_value_loss_which_omgmgs_eq11_equals_today():
    from omgmg.algos import omgmg, omiga

    g = torch.Generator().manual_seed(0)
    w, q, v = torch.rand(1, 6, 3, generator=g), torch.randn(1, 6, 3, generator=g), torch.randn(1, 6, 3, generator=g)
    z_omiga, z_omgmg = omiga.advantage_exponent(w, q, v, 2.0, 10.0), omgmg.advantage_exponent(w, q, v, 2.0, 10.0)
    assert torch.equal(z_omiga, z_omgmg)
    assert torch.equal(omiga.implicit_value_loss(z_omiga, w, v, 2.0), omgmg.implicit_value_loss(z_omgmg, w, v, 2.0))
    assert omiga.implicit_value_loss is not omgmg.implicit_value_loss  # a change to one leaves the other alone


def test_soft_chi2_closed_forms_by_hand():
    e, alpha = torch.tensor([-2.0, 0.0, 3.0]), 2.0
    assert soft_chi2_ratio(e, alpha).tolist() == pytest.approx([math.exp(-1.0), 1.0, 2.5])
    assert soft_chi2_dual(e, alpha).tolist() == pytest.approx([2 * (math.exp(-1.0) - 1), 0.0, 3 + 9 / 4])
    # g(e) = max_w [w e - alpha f(w)], f the soft-chi^2: check by brute force over w
    for x in (-2.0, 0.5, 3.0):
        w = torch.linspace(1e-4, 10, 200_001)
        f = torch.where(w < 1, w * torch.log(w) - w + 1, (w - 1) ** 2 / 2)
        assert (w * x - alpha * f).max().item() == pytest.approx(
            soft_chi2_dual(torch.tensor(x), alpha).item(), abs=1e-4
        )
    loss = dice_nu_loss(torch.tensor([[10.0]]), torch.tensor([[0.0, 3.0]]), gamma=0.9, alpha=2.0)
    assert loss.item() == pytest.approx(0.1 * 10 + (0 + 5.25) / 2)
    assert ratio_weighted_actor_loss(torch.tensor([[2.0]]), torch.tensor([[[-1.0, -2.0]]])).item() == pytest.approx(3.0)


# ----- learning on tiny data ----------------------------------------------------------------------------------------

CRITIC_LOSS = {"mabcq": "loss/q", "macql": "loss/q", "icq": "loss/q", "omar": "loss/q", "omiga": "loss/q"}


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("algo,kind", [c for c in CASES if c[0] != "comadice"])
def test_two_hundred_steps_lower_the_critic_loss(data, algo, kind):
    torch.manual_seed(0)
    agent = build(algo, data[kind], small(algo))
    loader = TransitionLoader(data[kind], 64, seed=0)
    logs = [{k: float(v) for k, v in agent.step(loader).items()} for _ in range(200)]
    assert all(np.isfinite(v) for log in logs for v in log.values())
    losses = [log[CRITIC_LOSS[algo]] for log in logs]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_comadice_lowers_its_dual_loss_and_normalises_the_ratio(data, kind):
    """The nu loss is a convex objective: measured on one large fixed sample, it must fall; at its
    minimum E_D[w*] = 1 (the ratio is a density ratio), so the mean ratio must move towards 1."""
    torch.manual_seed(0)
    # alpha 1: the ratio w*(e/alpha) starts far from 1 (at the default 10 it starts within 4% of it)
    agent = build("comadice", data[kind], small("comadice", lr=3e-4, gamma=0.9, alpha=1.0))
    loader = TransitionLoader(data[kind], 64, seed=0)
    probe = TransitionLoader(data[kind], 4096, seed=1)
    b, initial = agent.prepare(probe.sample_members()), agent.prepare_initial(probe.sample_initial_members())

    def measure():
        with torch.no_grad():
            e = agent.advantage(b)
            return (
                dice_nu_loss(agent.nu_tot(initial.obs, initial.state), e, 0.9, agent.cfg.alpha).item(),
                soft_chi2_ratio(e, agent.cfg.alpha).mean().item(),
            )

    loss0, ratio0 = measure()
    logs = [{k: float(v) for k, v in agent.step(loader).items()} for _ in range(300)]
    loss1, ratio1 = measure()
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert loss1 < loss0 - 0.1, (loss0, loss1)
    assert abs(ratio1 - 1) < 0.5 * abs(ratio0 - 1), (ratio0, ratio1)


# ----- gradient isolation -------------------------------------------------------------------------------------------


def _groups(agent) -> dict[str, dict[str, torch.Tensor]]:
    """Parameters and buffers by top-level attribute name (q, mixer, actor, ...)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in agent.state_dict().items():
        out.setdefault(key.split(".")[0], {})[key] = value.detach().clone()
    return out


def _moved(before, agent) -> set[str]:
    after = _groups(agent)
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


# (method, the attributes it must move); the first entry of each list is the critic step
STEPS = {
    "mabcq": [
        ("update_behaviour_model", {"behaviour"}),
        ("update_critic", {"q", "mixer"}),
        ("update_actor", {"actor"}),
        ("update_targets", {"q_target", "mixer_target", "actor_target"}),
    ],
    "macql": [
        ("update_critic", {"q", "mixer"}),
        ("update_actor", {"actor", "log_entropy_alpha"}),
        ("update_targets", {"q_target", "mixer_target"}),
    ],
    "icq": [
        ("update_critic", {"q", "mixer"}),
        ("update_actor", {"actor"}),
        ("update_targets", {"q_target", "mixer_target"}),
    ],
    "omar": [("update_critic", {"q"}), ("update_actor", {"actor"}), ("update_targets", {"q_target", "actor_target"})],
    "omiga": [
        ("update_critic", {"v", "q", "mixer"}),
        ("update_actor", {"actor"}),
        ("update_targets", {"q_target", "v_target", "mixer_target"}),
    ],
    "comadice": [("update_critic", {"nu", "mixer"}), ("update_actor", {"actor"})],
}
CRITICS = {
    "mabcq": ("q", "mixer"),
    "macql": ("q", "mixer"),
    "icq": ("q", "mixer"),
    "omar": ("q",),
    "omiga": ("v", "q", "mixer"),
    "comadice": ("nu", "mixer"),
}


@pytest.mark.parametrize("algo,kind", CASES)
def test_each_step_moves_only_its_own_networks(data, algo, kind):
    torch.manual_seed(0)
    agent = build(algo, data[kind], small(algo))
    loader = TransitionLoader(data[kind], 64, seed=0)
    b = agent.prepare(loader.sample_members())
    initial = agent.prepare_initial(loader.sample_initial_members())
    for method, expected in STEPS[algo]:
        if (
            not hasattr(agent, "actor")
            and method == "update_actor"
            or kind == "discrete"
            and algo == "mabcq"
            and method == "update_actor"
        ):
            continue  # discrete MACQL and MABCQ are greedy in Q: no actor
        if kind == "discrete" and algo == "mabcq":
            expected = expected - {"actor_target"}  # discrete BCQ has no perturbation model
        if method == "update_actor":  # clear the critic step's gradients, then look for any from the actor
            for name in CRITICS[algo]:
                for p in getattr(agent, name).parameters():
                    p.grad = None
        before = _groups(agent)
        args = (
            (b, initial)
            if (algo, method) == ("comadice", "update_critic")
            else ()
            if method == "update_targets"
            else (b,)
        )
        getattr(agent, method)(*args)
        assert _moved(before, agent) == expected, method
        if method == "update_actor":
            leaked = [
                p
                for name in CRITICS[algo]
                for p in getattr(agent, name).parameters()
                if p.grad is not None and p.grad.abs().sum() > 0
            ]
            assert not leaked, "the actor step put gradients on the critic"


# ----- checkpoints and the command ----------------------------------------------------------------------------------


@pytest.mark.checkpoint
@pytest.mark.parametrize("algo,kind", CASES)
def test_checkpoint_reload_gives_identical_parameters_and_actions(data, tmp_path, algo, kind):
    cfg = small(algo, steps=20, eval_every=20, eval_episodes=1, log_every=10)
    res = train(algo, data[kind], cfg, tmp_path / "run")
    path = res.run_dir / "checkpoints" / "latest.pt"
    saved = torch.load(path, weights_only=True)["weights"]
    a, b = load_policy(path), load_policy(path)
    assert all(torch.equal(saved[k], v) for k, v in a.state_dict().items())
    spec = data[kind].spec
    obs = a.normalise_obs(torch.randn(1, 16, spec.n_agents, spec.obs_dim))
    avail = torch.ones(1, 16, spec.n_agents, spec.n_actions, dtype=torch.bool) if spec.discrete else None
    assert torch.equal(a.act(obs, avail), b.act(obs, avail))
    assert res.final["eval/return"] is not None and np.isfinite(res.final["eval/return"])


@pytest.mark.roundtrip
def test_command_trains_a_baseline_with_its_own_options(data, tmp_path):
    args = [
        "train",
        "--dataset",
        str(data["continuous"].path),
        "--algo",
        "macql",
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "20",
        "--eval-every",
        "20",
        "--eval-episodes",
        "1",
        "--hidden",
        "16",
        "--cql-alpha",
        "2.5",
    ]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["algorithm"] == "macql" and saved["config"]["cql_alpha"] == 2.5 and saved["config"]["hidden"] == 16
    assert "final" in result.output
    bad = CliRunner().invoke(
        train_cli, ["train", "--dataset", str(data["continuous"].path), "--algo", "icq", "--cql-alpha", "1"]
    )
    assert bad.exit_code == 2 and "--cql-alpha does not apply to icq" in bad.output
