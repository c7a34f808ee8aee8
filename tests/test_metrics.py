"""One metric vocabulary: every name any algorithm logs is declared once, the JSONL log is the
canonical record, TensorBoard gets the same scalars (and forgets what a resume cuts back), and a
sweep's evaluations come out in marl-eval's layout."""

from __future__ import annotations

import json

import pytest
from conftest import fixture_datasets, small_config

from omgmg.algos import ALGORITHMS
from omgmg.collectors.behaviour import ALGORITHMS as BEHAVIOUR_ALGORITHMS
from omgmg.collectors.envs import resolve
from omgmg.collectors.training import train_behaviour
from omgmg.datakit import TransitionLoader
from omgmg.datakit.metrics import METRICS, MetricLog, check_record, is_metric, tensorboard_available
from omgmg.datakit.outputs import read_jsonl
from omgmg.rundir import read_log
from omgmg.trainer import build, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_datasets(tmp_path_factory.mktemp("metrics"), continuous=8, discrete=8)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_offline_algorithm_logs_only_declared_names(data, algo, kind):
    ds = data[kind]
    cfg = small_config(algo)
    model = build(algo, ds, cfg)
    metrics = model.step(TransitionLoader(ds, cfg.batch_size, seed=0))
    assert metrics and all(is_metric(k) for k in metrics), sorted(k for k in metrics if not is_metric(k))


@pytest.mark.roundtrip
@pytest.mark.parametrize("task, algo", [("fixture/continuous", "happo"), ("fixture/discrete", "mappo")])
def test_behaviour_training_logs_only_declared_names(task, algo, tmp_path):
    cfg_cls, _ = BEHAVIOUR_ALGORITHMS[algo]
    cfg = cfg_cls(total_env_steps=200, num_envs=4, rollout_len=25, eval_every=100)
    run = train_behaviour(resolve(*task.split("/")), algo, cfg, home=tmp_path, tensorboard=False)
    names = {k for r in read_jsonl(run.root / "log.jsonl") for k in r} - {"env_steps"}
    assert {"loss/actor", "loss/critic", "eval/return", "time/steps_per_s"} <= names
    assert all(is_metric(k) for k in names), sorted(k for k in names if not is_metric(k))


def test_names_outside_the_vocabulary_are_refused_and_namespaces_are_the_declared_ones():
    assert {name.split("/")[0] for name in METRICS} == {"loss", "value", "policy", "eval", "charts", "time"}
    assert is_metric("loss/actor_3") and not is_metric("losses/actor") and not is_metric("loss/actor_x")
    with pytest.raises(ValueError, match="losses/actor"):
        check_record({"step": 1, "losses/actor": 0.5})


@pytest.mark.roundtrip
@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is an optional extra")
def test_tensorboard_gets_the_jsonl_scalars_and_a_resume_purges_what_it_cut(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricLog(tmp_path, index="step", tensorboard=True) as log:
        for step in (1, 2, 3):
            log.write({"step": step, "loss/q": float(step), "eval/return": 10.0 * step, "eval/win_rate": None})
    with MetricLog(tmp_path, index="step", resume_at=2, tensorboard=True) as log:  # resumed from step 2's checkpoint
        log.write({"step": 3, "loss/q": 30.0})
    assert [r["loss/q"] for r in read_log(tmp_path)] == [1.0, 2.0, 30.0]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/q")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [e.step for e in events.Scalars("eval/return")] == [1, 2]


@pytest.mark.roundtrip
def test_without_tensorboard_nothing_but_the_jsonl_is_written(data, tmp_path):
    train(
        "bc",
        data["continuous"],
        small_config("bc", steps=4, eval_every=4, eval_episodes=2),
        tmp_path / "run",
        tensorboard=False,
    )
    assert not (tmp_path / "run" / "tensorboard").exists()
    evals = [r for r in read_log(tmp_path / "run") if "eval/return" in r]
    assert len(evals[-1]["eval/episode_returns"]) == 2  # every evaluation episode's return, for marl-eval
    assert json.loads((tmp_path / "run" / "results.json").read_text())["final"]["step"] == 4
