"""The member axis (omgmg.members): M training runs batched into one program behave as M single runs.

Member k of a batched run follows the single run with member k's config: the same initialisation, the
same minibatches, the same random draws, its own optimiser state. Batched matmuls may sum in another
order than single ones, so parameters are compared to float tolerance; everything else is exact.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fixture_datasets, small_config

from omgmg.algos import ALGORITHMS
from omgmg.cli.train import main as train_cli
from omgmg.datakit import TransitionLoader
from omgmg.datakit.errors import CheckpointError, ConfigError, RequestError
from omgmg.members import MemberRandom, clip_grad_norm_per_member, member_mean
from omgmg.rundir import load_policy, read_log
from omgmg.trainer import build, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_datasets(tmp_path_factory.mktemp("members"), continuous=12, discrete=12)


DEVICE = os.environ.get("OMGMG_TEST_DEVICE", "cpu")  # benchmarks/gpu_check.sh runs these on cuda


def _follow(algo_name, ds, cfgs, steps):
    """Train the members batched and each alone, in float64 (float32's rounding noise, which Adam
    amplifies on tiny data, would hide a real difference), and return the largest difference between
    member k and single run k over parameters and returned losses."""
    torch.set_num_threads(1)
    batched = build(algo_name, ds, cfgs, DEVICE).double()
    singles = [build(algo_name, ds, c, DEVICE).double() for c in cfgs]
    loaders = (
        TransitionLoader(ds, 32, seed=[c.seed for c in cfgs], device=DEVICE),
        [TransitionLoader(ds, 32, seed=c.seed, device=DEVICE) for c in cfgs],
    )
    worst = 0.0
    for _ in range(steps):
        got = batched.step(loaders[0])
        for k, (single, loader) in enumerate(zip(singles, loaders[1], strict=True)):
            want = single.step(loader)
            assert got.keys() == want.keys()
            worst = max(worst, *(abs(float(got[name][k]) - float(want[name][0])) for name in want))
    stacked = batched.state_dict()
    for k, single in enumerate(singles):
        for name, _ in single.named_parameters(remove_duplicate=False):
            worst = max(worst, float((stacked[name][k] - single.state_dict()[name][0]).abs().max()))
        assert torch.equal(batched.rng.generators[k].get_state(), single.rng.generators[0].get_state())
        assert torch.equal(loaders[0].state_dict(k)["generator"], loaders[1][k].state_dict()["generator"])
    return worst


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_member_k_of_a_batched_run_follows_the_single_run_with_seed_k(data, algo, kind):
    """Every algorithm, both action types: 100 steps of 2 members against 2 single runs."""
    cfgs = [small_config(algo, seed=s, batch_size=32) for s in (3, 0)]
    assert _follow(algo, data[kind], cfgs, steps=100) < 1e-12


def test_grid_members_follow_single_runs_with_those_values(data):
    """Values exact in float32 (a member's value is a float32 tensor, which .double() does not make exact)."""
    cfgs = [
        small_config("omgmg", lam=lam, nu=nu, alpha=a)
        for lam, nu, a in [(0.0, 1.0, 8.0), (0.5, 16.0, 4.0), (1.0, 0.125, 8.0)]
    ]
    assert _follow("omgmg", data["continuous"], cfgs, steps=60) < 1e-12
    cfgs = [small_config("icq", seed=1, beta=b, alpha=a) for b, a in [(8.0, 0.125), (1024.0, 1.0)]]
    assert _follow("icq", data["discrete"], cfgs, steps=60) < 1e-12


def _weights(run) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


@pytest.mark.parametrize("algo,kind", [("omgmg", "continuous"), ("omiga", "discrete")])
def test_a_batched_run_writes_what_each_single_run_writes(data, tmp_path, algo, kind):
    """Through the trainer in float32: same minibatches and random draws (exact), same parameters (float
    rounding, over 30 steps), one run directory per member that loads and evaluates alone."""
    cfgs = [small_config(algo, seed=s, steps=30, log_every=10, eval_every=30, eval_episodes=1) for s in (3, 0)]
    results = train(algo, data[kind], cfgs, [tmp_path / f"m{c.seed}" for c in cfgs])
    assert [r.run_dir.name for r in results] == ["m3", "m0"]
    for c in cfgs:
        single = train(algo, data[kind], c, tmp_path / f"s{c.seed}")
        a, b = _weights(tmp_path / f"s{c.seed}"), _weights(tmp_path / f"m{c.seed}")
        assert a["step"] == b["step"] and a["config"] == b["config"]
        assert torch.equal(a["loader"]["generator"], b["loader"]["generator"])
        assert torch.equal(a["torch_rng"], b["torch_rng"])
        for k, v in a["weights"].items():
            assert torch.allclose(v, b["weights"][k], atol=1e-5), k
        member = next(r for r in results if r.run_dir.name == f"m{c.seed}")
        assert member.final["eval/return"] == pytest.approx(single.final["eval/return"], abs=1e-4)
        assert load_policy(tmp_path / f"m{c.seed}" / "checkpoints" / "latest.pt").members == 1


class Stop(Exception):
    """Raised from a progress callback: the run stops there, as if killed after its last checkpoint."""


def _stop_at(stop_step: int, evaluated: bool = False):
    """A progress callback that stops the run at ``stop_step`` (at its evaluation, with ``evaluated``)."""

    def progress(step, total, evs):
        if step == stop_step and (evs or not evaluated):
            raise Stop

    return progress


def _assert_same_runs(straight, cut):
    """Each pair of run directories holds the same weights, bit for bit, and the same log (times aside)."""
    drop = lambda run: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_log(run)]  # noqa: E731
    for a, b in zip(straight, cut, strict=True):
        wa, wb = _weights(a), _weights(b)
        assert wa["step"] == wb["step"]
        assert all(torch.equal(v, wb["weights"][k]) for k, v in wa["weights"].items())
        assert drop(a) == drop(b)


# stopped at an evaluation's checkpoint (60), or between evaluations at a timed one (checkpoint_minutes=0: a
# checkpoint at every log step, 15, 30, 45, ...; evaluations at 60 only)
@pytest.mark.parametrize("eval_every, checkpoint_minutes, stop_step", [(30, 10.0, 60), (60, 0.0, 45)])
def test_a_batched_run_resumed_after_an_interruption_continues_every_member_exactly(
    data, tmp_path, eval_every, checkpoint_minutes, stop_step
):
    cfgs = [
        small_config("omgmg", steps=90, log_every=15, eval_every=eval_every, eval_episodes=1, seed=s) for s in (0, 1)
    ]
    straight = [tmp_path / "a0", tmp_path / "a1"]
    train("omgmg", data["discrete"], cfgs, straight)
    cut = [tmp_path / "b0", tmp_path / "b1"]
    with pytest.raises(Stop):
        stop = _stop_at(stop_step, evaluated=stop_step % eval_every == 0)
        train("omgmg", data["discrete"], cfgs, cut, progress=stop, checkpoint_minutes=checkpoint_minutes)
    assert all(_weights(o)["step"] == stop_step for o in cut)
    calls = []
    train("omgmg", data["discrete"], cfgs, cut, progress=lambda *call: calls.append(call))
    assert calls[0] == (stop_step, 90, None)  # the progress of a resumed run starts where it resumes
    _assert_same_runs(straight, cut)


# killed while the first checkpoints are written, after the first `saved` members' saves: at the first evaluation
# (30), or at the first timed checkpoint (15) of a run that evaluates at 30
@pytest.mark.parametrize("saved, checkpoint_minutes, stop_step", [(1, 10.0, 30), (2, 10.0, 30), (1, 0.0, 15)])
def test_a_batch_killed_while_its_first_checkpoints_are_written_starts_over_exactly(
    data, tmp_path, saved, checkpoint_minutes, stop_step
):
    cfgs = [small_config("bc", steps=60, log_every=15, eval_every=30, eval_episodes=1, seed=s) for s in (0, 1, 2)]
    straight = [tmp_path / f"a{k}" for k in range(3)]
    train("bc", data["continuous"], cfgs, straight)
    cut = [tmp_path / f"b{k}" for k in range(3)]
    with pytest.raises(Stop):
        train("bc", data["continuous"], cfgs, cut, progress=_stop_at(stop_step, evaluated=stop_step == 30),
              checkpoint_minutes=checkpoint_minutes)  # fmt: skip
    for o in cut[saved:]:  # as if the kill came after `saved` members' first saves: the others have none
        for name in ("latest.pt", "best.pt"):
            (o / "checkpoints" / name).unlink(missing_ok=True)
    warnings = []
    train("bc", data["continuous"], cfgs, cut, warn=warnings.append)
    assert any(f"(step {stop_step})" in w and "every member starts over from step 0" in w for w in warnings)
    _assert_same_runs(straight, cut)


def test_checkpoint_minutes_must_be_a_number_of_minutes(data, tmp_path):
    with pytest.raises(RequestError, match="checkpoint_minutes='nan' is not a number of minutes >= 0"):
        train("bc", data["continuous"], small_config("bc", steps=2), tmp_path / "r", checkpoint_minutes=float("nan"))
    assert not (tmp_path / "r").exists()
    args = ["train", "--dataset", str(data["continuous"].path), "--algo", "bc", "--steps", "2", "--out"]
    failed = CliRunner().invoke(train_cli, [*args, str(tmp_path / "r"), "--checkpoint-minutes", "nan"])
    assert failed.exit_code == 2 and "--checkpoint-minutes nan is not a number of minutes" in failed.output
    assert not (tmp_path / "r").exists()


def test_members_one_save_ahead_go_back_to_the_step_the_others_are_at(data, tmp_path):
    cfgs = [small_config("bc", steps=60, log_every=15, eval_every=30, seed=s) for s in (0, 1)]
    outs = [tmp_path / "r0", tmp_path / "r1"]
    train("bc", data["continuous"], cfgs, outs, evaluate=False)
    straight = _weights(outs[0])["weights"]
    # as if interrupted between the members' saves at step 60: member 1 is still at step 30
    ck = outs[1] / "checkpoints"
    (ck / "latest.previous.pt").replace(ck / "latest.pt")
    cfgs = [small_config("bc", steps=60, log_every=15, eval_every=30, seed=s) for s in (0, 1)]
    train("bc", data["continuous"], cfgs, outs, evaluate=False)
    again = _weights(outs[0])["weights"]
    assert all(torch.equal(v, again[k]) for k, v in straight.items())  # member 0 went back to 30 and redid it


def test_a_checkpoint_without_the_member_axis_is_refused_in_one_line_and_kept(data, tmp_path):
    """Development builds before the member axis (never released) wrote per-member tensors without it; omgmg
    keeps no code to convert them, and says so rather than failing deep inside torch."""
    cfg = small_config("omgmg", steps=40, log_every=20, eval_every=20, eval_episodes=1)
    run = tmp_path / "old"
    train("omgmg", data["continuous"], cfg, run)
    path = run / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    params = {name for name, _ in load_policy(path).named_parameters(remove_duplicate=False)}
    # those builds: nn.Linear's (out, in) and (out,), per-agent blocks (N, in, out)
    state["weights"] = {k: v[0, 0] if k in params and v.shape[:2] == (1, 1) else v[0] if k in params else v
                        for k, v in state["weights"].items()}  # fmt: skip
    from omgmg.datakit.checkpoints import save_checkpoint

    save_checkpoint(state, path, keep_previous=False)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"has shape .* before the member axis .*train the run again"):
        load_policy(path)
    longer = small_config("omgmg", steps=60, log_every=20, eval_every=20, eval_episodes=1)
    with pytest.raises(CheckpointError, match="before the member axis"):
        train("omgmg", data["continuous"], longer, run)  # resuming it
    assert path.read_bytes() == before


def test_members_may_differ_only_in_seed_and_the_batchable_hyperparameters(data):
    with pytest.raises(ConfigError, match="may differ only in seed and lam, nu, alpha; these differ: hidden"):
        build("omgmg", data["continuous"], [small_config("omgmg"), small_config("omgmg", seed=1, hidden=64)])
    with pytest.raises(ConfigError, match="same seed and settings"):
        build("bc", data["continuous"], [small_config("bc"), small_config("bc")])
    with pytest.raises(ConfigError, match="differ only in seed and none; these differ: lr"):
        build("bc", data["continuous"], [small_config("bc"), small_config("bc", seed=1, lr=0.1)])


def test_per_member_pieces_by_hand():
    x = torch.arange(12.0).reshape(2, 3, 2)
    assert member_mean(x).tolist() == [2.5, 8.5]
    p = torch.nn.Parameter(torch.zeros(2, 3))
    p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])  # norms 5 and 0.5
    norms = clip_grad_norm_per_member([p], 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert p.grad[0].norm().item() == pytest.approx(1.0, rel=1e-5) and p.grad[1].norm().item() == pytest.approx(0.5)
    rng = MemberRandom.seeded([7, 8])
    draws = rng.randn((4,))
    assert torch.equal(draws[0], torch.randn(4, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(draws[1], torch.randn(4, generator=torch.Generator().manual_seed(8)))


def test_k_samples_per_row_are_the_draws_of_sampling_the_repeated_rows():
    from omgmg.nets import TanhGaussianPolicy

    box = (
        np.array([[-1.0, -2.0]] * 3, np.float32),
        np.array([[1.0, 2.0]] * 3, np.float32),
        np.ones((3, 2), np.float32),
    )
    actor = TanhGaussianPolicy(2, 3, 5, 2, *box, hidden=16)
    obs = torch.randn(2, 4, 3, 5)  # (M, B, N, O)
    once, logp_once = actor.sample_repeated(obs, 7, MemberRandom.seeded([1, 2]))
    repeated, logp_repeated = actor.sample(obs.repeat(1, 7, 1, 1), MemberRandom.seeded([1, 2]))
    assert once.shape == (2, 28, 3, 2) and logp_once.shape == (2, 28, 3)
    torch.testing.assert_close(once, repeated)
    torch.testing.assert_close(logp_once, logp_repeated)
    assert not torch.allclose(once[:, :4], once[:, 4:8])  # the k copies of a row draw different actions


def test_command_trains_seeds_and_a_grid_into_one_directory_per_member(data, tmp_path):
    args = ["train", "--dataset", str(data["continuous"].path), "--algo", "omgmg", "--out", str(tmp_path / "runs"),
            "--seeds", "0-1", "--grid", "lam=0,0.5", "--steps", "20", "--eval-every", "20", "--eval-episodes", "1",
            "--hidden", "16", "--batch-size", "32", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert names == ["omgmg-seed0-lam0", "omgmg-seed0-lam0.5", "omgmg-seed1-lam0", "omgmg-seed1-lam0.5"]
    config = json.loads((tmp_path / "runs" / "omgmg-seed1-lam0.5" / "config.json").read_text())["config"]
    assert config["seed"] == 1 and config["lam"] == 0.5
    from omgmg.experiments.runs import runs_to_evaluate  # what `omgmg eval` makes of each kind of path

    groups, folder = runs_to_evaluate(tmp_path / "runs")
    assert folder and {k: sorted(p.name for p in v) for k, v in groups.items()} == {
        "omgmg lam=0": ["omgmg-seed0-lam0", "omgmg-seed1-lam0"],
        "omgmg lam=0.5": ["omgmg-seed0-lam0.5", "omgmg-seed1-lam0.5"],
    }
    one = tmp_path / "runs" / "omgmg-seed0-lam0"
    assert runs_to_evaluate(one) == ({"": [one]}, False)
    assert runs_to_evaluate(one / "checkpoints" / "latest.pt") == ({"": [one / "checkpoints" / "latest.pt"]}, False)
    assert runs_to_evaluate(tmp_path) == (groups, True)  # a folder of such folders: the runs one level down
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run directories"):
        runs_to_evaluate(tmp_path / "empty")
    bad = CliRunner().invoke(train_cli, args[:-2] + ["--grid", "hidden=16,32"])
    assert bad.exit_code == 2 and "omgmg batches only lam, nu, alpha, not hidden" in bad.output
    bad = CliRunner().invoke(train_cli, args[:7] + ["--seeds", "3-x"])
    assert bad.exit_code == 2 and "give seeds as a range" in bad.output
    if not torch.cuda.is_available():
        bad = CliRunner().invoke(train_cli, args[:7] + ["--device", "cuda"])
        assert bad.exit_code == 2 and "no CUDA device" in bad.output


@pytest.mark.slow
def test_a_compiled_update_trains_the_members_as_the_eager_one(data, tmp_path):
    """``--compile`` (torch.compile; CUDA graphs on a CUDA device): two OMGMG members, 40 steps, the same
    logged losses and final parameters as eager to float32 tolerance (Inductor may fuse and reorder sums)."""
    for command in ("train", "sweep"):
        assert "--compile" in CliRunner().invoke(train_cli, [command, "--help"]).output
    cfgs = [small_config("omgmg", steps=40, log_every=10, seed=s) for s in (0, 1)]
    eager, compiled = [tmp_path / "e0", tmp_path / "e1"], [tmp_path / "c0", tmp_path / "c1"]
    train("omgmg", data["continuous"], cfgs, eager, evaluate=False, device=DEVICE)
    train("omgmg", data["continuous"], cfgs, compiled, evaluate=False, device=DEVICE, compile_update=True)
    for a, b in zip(eager, compiled, strict=True):
        la, lb = read_log(a), read_log(b)
        assert [r["step"] for r in la] == [r["step"] for r in lb] and len(la) >= 4
        for ra, rb in zip(la, lb, strict=True):
            for k, v in ra.items():
                if k.startswith(("loss/", "value/", "policy/")):
                    assert rb[k] == pytest.approx(v, rel=1e-3, abs=1e-4), (k, ra["step"])
        wa, wb = _weights(a)["weights"], _weights(b)["weights"]
        assert max(float((v - wb[k]).abs().max()) for k, v in wa.items()) < 1e-3


def test_member_configs_expand_seeds_and_grid_values_in_the_library():
    from omgmg.algos import member_configs
    from omgmg.datakit.errors import ConfigError

    members = member_configs("omgmg", "mamujoco", {"steps": 10}, [0, 1], {"lam": [0.0, 0.5]})
    assert [name for name, _ in members] == [
        "omgmg-seed0-lam0", "omgmg-seed1-lam0", "omgmg-seed0-lam0.5", "omgmg-seed1-lam0.5"
    ]  # fmt: skip
    assert [(c.seed, c.lam, c.steps, c.nu) for _, c in members][-1] == (1, 0.5, 10, 10.0)  # the suite's nu
    with pytest.raises(ConfigError, match="bc batches only seeds, not lam"):
        member_configs("bc", None, {}, [0], {"lam": [0.0]})
    with pytest.raises(ConfigError, match="more than 1000 in one program"):
        member_configs("omgmg", None, {}, list(range(600)), {"lam": [0.0, 1.0]})
