"""One config story: both commands take their options from the config dataclasses, --help shows the
default that applies on each suite, bad values are ConfigErrors raised by the dataclasses (exit 2),
and library messages name the library's parameter while the commands show their flag."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from omgmg.algos import make_config
from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli
from omgmg.collectors.collect import CollectRequest
from omgmg.collectors.fixtures import make_fixture
from omgmg.collectors.happo import HAPPOConfig
from omgmg.collectors.mappo import MAPPOConfig
from omgmg.datakit.errors import ConfigError, RequestError


def test_behaviour_settings_reach_the_behaviour_config_and_others_are_refused():
    req = CollectRequest("fixture", "continuous", "medium", train_steps=3000, seed=4, behaviour={"actor_lr": 1e-3})
    cfg = req.behaviour_config("happo")
    assert isinstance(cfg, HAPPOConfig) and cfg.actor_lr == 1e-3 and cfg.total_env_steps == 3000 and cfg.seed == 4
    assert req.behaviour_config("happo").critic_lr == HAPPOConfig().critic_lr  # the rest stays default
    with pytest.raises(ConfigError, match="behaviour setting lr is not one of happo's"):
        CollectRequest("fixture", "continuous", "medium", behaviour={"lr": 1e-3}).behaviour_config("happo")
    assert CollectRequest("fixture", "discrete", "medium", behaviour={"lr": 2e-4}).behaviour_config("mappo").lr == 2e-4
    with pytest.raises(ConfigError, match="eval_every must be >= 1"):
        CollectRequest("fixture", "discrete", "medium", behaviour={"eval_every": 0}).behaviour_config("mappo")


def test_collect_options_come_from_the_request_and_the_behaviour_configs():
    help_ = CliRunner().invoke(data_cli, ["collect", "--help"], terminal_width=200).output
    for option in ("--level", "--transitions", "--num-envs", "--medium-fraction", "--force", "--tensorboard"):
        assert option in help_
    assert "--behaviour.lr" in help_ and "--behaviour.actor-lr" in help_ and "--behaviour.gamma" in help_
    assert "--behaviour.seed" not in help_ and "--behaviour.total-env-steps" not in help_  # set by the request
    assert "Seed of the behaviour policy's training and of the rollouts." in help_  # CollectRequest's docstring
    assert "mappo: Width of the two hidden layers of actor and critic. (default 64)" in help_
    bad = CliRunner().invoke(
        data_cli, ["collect", "fixture", "continuous", "--level", "medium", "--behaviour.lr", "0.001"]
    )
    assert bad.exit_code == 2 and "behaviour setting lr is not one of happo's" in bad.output
    random = CliRunner().invoke(
        data_cli, ["collect", "fixture", "continuous", "--level", "random", "--behaviour.gamma", "0.9"]
    )
    assert random.exit_code == 2 and "behaviour settings do not apply" in random.output
    assert (
        CliRunner()
        .invoke(data_cli, ["collect", "fixture", "continuous", "--level", "random", "--workers", "0"])
        .exit_code
        == 2
    )


def test_train_help_shows_the_default_each_suite_gets():
    help_ = CliRunner().invoke(train_cli, ["train", "--help"], terminal_width=200).output
    line = " ".join(help_.split("--nu FLOAT", 1)[1].split("--", 1)[0].split())
    assert "(default 1.0; mamujoco: 10.0, smacv2: 10.0)" in line
    assert make_config("omgmg", "mamujoco").nu == 10.0 and make_config("omgmg", "smacv2").nu == 10.0
    assert make_config("omgmg", None).nu == 1.0  # a dataset of no known suite: Algorithm 1 as written
    # a suite default one algorithm has and the other suite lacks: OMIGA's alpha on MaMuJoCo only
    alpha = " ".join(help_.split("--alpha FLOAT", 1)[1].split("--", 1)[0].split())
    assert "omiga: Regularisation temperature" in alpha and "(default 10.0; mamujoco: 100.0)" in alpha
    assert make_config("omiga", "mamujoco").alpha == 100.0 and make_config("omiga", "smacv2").alpha == 10.0
    # ICQ: both temperatures are scale-bound, so both suites get their own (docs/omgmg.md)
    beta = " ".join(help_.split("--beta FLOAT", 1)[1].split("--", 1)[0].split())
    assert "(default 1000.0; mamujoco: 100000.0, smacv2: 10000.0)" in beta
    icq_mamujoco, icq_smacv2 = make_config("icq", "mamujoco"), make_config("icq", "smacv2")
    assert (icq_mamujoco.beta, icq_mamujoco.alpha) == (1e5, 10.0) and (icq_smacv2.beta, icq_smacv2.alpha) == (1e4, 0.1)


def test_bad_settings_are_config_errors_that_name_the_setting_not_a_flag(tmp_path):
    with pytest.raises(ConfigError) as e:
        make_config("bc", None, lam=0.5)
    assert str(e.value).startswith("lam=... does not apply to bc") and "--" not in str(e.value)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        make_config("omgmg", None, lr=-1.0)
    with pytest.raises(ConfigError, match="unknown algorithm 'sac'"):
        make_config("sac")
    with pytest.raises(ConfigError):
        MAPPOConfig(num_envs=0)
    ds = make_fixture(tmp_path / "d.zarr", "continuous", episodes=3)
    out = CliRunner().invoke(train_cli, ["train", "--dataset", str(ds.path), "--algo", "bc", "--lam", "0.5"])
    assert out.exit_code == 2 and "--lam does not apply to bc" in out.output


def test_library_messages_name_parameters_and_the_commands_show_flags(tmp_path):
    make_fixture(tmp_path / "d.zarr", "continuous", episodes=3)
    with pytest.raises(RequestError) as e:
        from omgmg.collectors.collect import collect

        collect(CollectRequest("fixture", "continuous", "random", out=tmp_path / "d.zarr"), on_note=lambda m: None)
    assert "pass force=True to replace it or out=... for another path" in str(e.value)
    out = CliRunner().invoke(
        data_cli, ["collect", "fixture", "continuous", "--level", "random", "--out", str(tmp_path / "d.zarr")]
    )
    assert out.exit_code == 2 and "pass --force to replace it or --out for another path" in out.output


def test_each_setting_named_in_a_message_becomes_the_flag_that_sets_it():
    from omgmg.cli.common import as_flag
    from omgmg.datakit.errors import render_options

    text = "<<resume=False>>, <<overwrite=True>>, <<backend=smax>>, <<out=...>>, <<tensorboard=False>>"
    assert render_options(text) == "resume=False, overwrite=True, backend='smax', out=..., tensorboard=False"
    assert render_options(text, as_flag) == "--force, --force, --backend smax, --out, --no-tensorboard"


def test_the_observation_layout_is_a_request_option_and_local_is_the_default():
    assert CollectRequest("mamujoco", "Hopper-3x1", "random").task_options() == {}
    assert CollectRequest("mamujoco", "Hopper-3x1", "random", obs_mode="local").task_options() == {}
    assert CollectRequest("mamujoco", "Hopper-3x1", "random", obs_mode="omiga").task_options() == {"obs_mode": "omiga"}
    help_ = CliRunner().invoke(data_cli, ["collect", "--help"], terminal_width=200).output
    assert "--obs-mode TEXT" in help_ and "OMIGA's code trains on" in help_
    out = CliRunner().invoke(data_cli, ["collect", "smacv2", "protoss_5v5", "--level", "random", "--obs-mode", "omiga"])
    assert out.exit_code == 2 and "SMACv2 tasks take no option obs_mode" in out.output


def test_a_multi_threaded_cpu_run_on_busy_cores_is_told_to_use_one_thread(monkeypatch):
    from omgmg import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(machine, "other_cpu_load", lambda: 1.9)
    note = machine.busy_cpu_note(2)
    assert note and "other processes keep 1.9 of 2 cores busy" in note and "--torch-threads 1" in note
    assert machine.busy_cpu_note(1) is None  # one thread waits on no other
    monkeypatch.setattr(machine, "other_cpu_load", lambda: 0.3)
    assert machine.busy_cpu_note(2) is None  # an idle machine, whatever its load average says


def test_other_cpu_load_sees_a_busy_process_and_not_this_one():
    import multiprocessing

    from omgmg.machine import other_cpu_load

    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # this process busy: not counted as another's load
        pass
    assert other_cpu_load(0.3) is not None
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(3.0,))
    spinner.start()
    try:
        time.sleep(0.5)
        assert other_cpu_load(0.5) > 0.5  # one core kept busy by another process
    finally:
        spinner.join()


def _spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
