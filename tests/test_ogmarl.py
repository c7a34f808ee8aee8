"""OG-MARL vaults: written the way OG-MARL's own code writes them, read the way its code reads them."""

from __future__ import annotations

import json
import shutil
import warnings

import flashbax as fbx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import fixture_datasets
from flashbax.vault import Vault

from omgmg.datakit import DatasetError, iter_episodes, validate
from omgmg.datakit.errors import BackendUnavailable, RequestError
from omgmg.datakit.ogmarl import (
    default_vault_path,
    export_vault,
    import_vault,
    read_experience,
    vault_names,
    vault_task,
)


def record_vault(root, source, env_name, scenario, uid, steps):
    """Write a vault as OG-MARL's ExperienceRecorder does: one packed timestep per step (observations,
    actions, rewards, terminals, truncations as per-agent dicts stacked, infos before the step) added to a
    flat flashbax buffer, which a Vault writes out."""
    import jax

    first = steps[0]
    buffer = fbx.make_flat_buffer(max_length=2 * len(steps) + 2, min_length=1, sample_batch_size=1)
    state = buffer.init(first)
    vault = Vault(
        vault_name=f"{source}/{env_name}/{scenario}.vlt",
        experience_structure=state.experience,
        rel_dir=str(root),
        vault_uid=uid,
    )
    add = jax.jit(buffer.add, donate_argnums=0)
    for t in steps:
        state = add(state, t)
    vault.write(state)
    return root / source / env_name / f"{scenario}.vlt" / uid


def hopper_steps(episodes=3, seed=0):
    """Real Hopper-3x1 rollouts through gymnasium-robotics as OG-MARL's gymnasium_mamujoco wrapper makes
    them (agent_obsk=1, observations zero-padded to the widest and float32, infos state = env.state());
    returns the packed timesteps and each episode's (seed, actions)."""
    from gymnasium_robotics import mamujoco_v1

    env = mamujoco_v1.parallel_env("Hopper", "3x1", agent_obsk=1)
    agents, O = env.possible_agents, max(env.observation_space(a).shape[0] for a in env.possible_agents)
    pad = lambda o: np.concatenate([o, np.zeros(O - len(o))]).astype(np.float32)  # noqa: E731
    rng, steps, plays = np.random.default_rng(seed), [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        info_state, acts = env.state().astype(np.float32), []
        while True:
            actions = {a: rng.uniform(-1, 1, 1).astype(np.float32) for a in agents}
            nxt, rew, term, trunc, _ = env.step(actions)
            steps.append(
                {
                    "observations": np.stack([pad(obs[a]) for a in agents]),
                    "actions": np.stack([actions[a] for a in agents]),
                    "rewards": np.array([rew[a] for a in agents], np.float32),
                    "terminals": np.array([term[a] for a in agents]),
                    "truncations": np.array([trunc[a] for a in agents]),
                    "infos": {"state": info_state},
                }
            )
            acts.append(np.stack([actions[a] for a in agents]))
            obs, info_state = nxt, env.state().astype(np.float32)
            if all(term.values()) or all(trunc.values()):
                break
        plays.append((seed + e, np.asarray(acts)))
    return steps, plays


def test_a_vault_recorded_as_og_marl_does_imports_and_matches_the_live_environment(tmp_path):
    from omgmg.collectors.envs import check_compatible, make_env, task_for_dataset

    steps, plays = hopper_steps()
    vault = record_vault(tmp_path / "vaults", "og_marl", "gymnasium_mamujoco", "3hopper", "Medium", steps)
    ds = import_vault(vault.parent, tmp_path / "h.zarr")  # task and level from the path and the uid
    assert (ds.spec.name, ds.level, ds.spec.backend) == ("mamujoco/Hopper-3x1", "medium", "gymnasium-robotics")
    assert ds.spec.obs_dims == (8, 9, 8) and ds.spec.state_dim == 11 and validate(ds.path) == []
    assert ds.meta["collection"]["row_convention"].startswith("last-step")
    env = make_env(task_for_dataset(ds.spec))
    check_compatible(ds.spec, env.spec)  # the policy trained on it acts in the live environment
    for ep, (seed, actions) in zip(iter_episodes(ds), plays):  # the env replays the vault's rows exactly
        r = env.reset(seed=seed)
        obs, state = [r.obs], [r.state]
        for a in actions:
            s = env.step(a)
            obs.append(s.obs)
            state.append(s.state)
        assert len(ep["reward"]) == len(actions) and bool(ep["terminated"][-1])  # random hoppers fall
        assert np.array_equal(ep["obs"], np.asarray(obs[:-1])) and np.array_equal(ep["state"], np.asarray(state[:-1]))
    assert "warning" not in ds.meta["collection"]


def test_our_export_is_what_og_marls_buffer_samples_and_imports_back_identically(tmp_path, fixture_data):
    import jax

    for ds in fixture_data.values():
        vault = export_vault(ds, default_vault_path(ds))
        source, env_name, scenario = vault_names(ds.spec)
        assert vault == ds.path.parent / "vaults" / source / env_name / f"{scenario}.vlt" / "Medium"
        # read by flashbax the way OG-MARL's populate_from_vault does: every row is the dataset's
        exp = Vault(vault_name=f"{source}/{env_name}/{scenario}.vlt", vault_uid="Medium", rel_dir=str(vault.parents[3]))
        exp = exp.read().experience
        eps = list(iter_episodes(ds))
        assert np.array_equal(exp["observations"][0], np.concatenate([e["obs"] for e in eps]))
        assert np.array_equal(exp["actions"][0], np.concatenate([e["actions"] for e in eps]))
        assert np.array_equal(exp["infos"]["state"][0], np.concatenate([e["state"] for e in eps]))
        rewards = np.concatenate([e["reward"] for e in eps])
        assert np.array_equal(exp["rewards"][0], np.repeat(rewards[:, None], ds.spec.n_agents, 1))
        ends = np.asarray(exp["terminals"][0]).all(-1) | np.asarray(exp["truncations"][0]).all(-1)
        assert np.array_equal(np.flatnonzero(ends), np.cumsum([len(e["reward"]) for e in eps]) - 1)
        if ds.spec.discrete:
            assert np.array_equal(exp["infos"]["legals"][0] > 0.5, np.concatenate([e["avail"] for e in eps]))
        # OG-MARL's FlashbaxReplayBuffer: a trajectory buffer sampling (B, T, ...) sequences of rows
        with warnings.catch_warnings():  # flashbax says how it reads max_size=5, as OG-MARL's code passes it
            warnings.simplefilter("ignore", UserWarning)
            buffer = fbx.make_trajectory_buffer(
                add_batch_size=1, sample_batch_size=4, sample_sequence_length=5, period=1, min_length_time_axis=1,
                max_size=5,
            )  # fmt: skip
        stored = Vault(f"{source}/{env_name}/{scenario}.vlt", vault_uid="Medium", rel_dir=str(vault.parents[3]))
        batch = jax.jit(buffer.sample)(stored.read(), jax.random.PRNGKey(0)).experience
        N, O, S = ds.spec.n_agents, ds.spec.obs_dim, ds.spec.state_dim
        assert batch["observations"].shape == (4, 5, N, O) and batch["infos"]["state"].shape == (4, 5, S)
        assert batch["rewards"].shape == batch["terminals"].shape == batch["truncations"].shape == (4, 5, N)
        # and back: the same dataset, final observations, wins and spec included
        back = import_vault(vault, ds.path.parent / f"back-{ds.path.name}")
        assert back.spec == ds.spec and back.level == ds.level and validate(back.path) == []
        for a, b in zip(iter_episodes(ds), iter_episodes(back), strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def fixture_data(tmp_path):
    return fixture_datasets(tmp_path, continuous=6, discrete=8)


def omiga_conversion_steps(episodes=2, seed=0):
    """OG-MARL's conversion of an OMIGA file: OMIGA's rows (observations in OMIGA's layout, an extra final
    row per episode flagged terminal) as one vault stream; returns the steps and the true states."""
    from omgmg.collectors.envs import make_env

    env = make_env("mamujoco/Hopper-3x1", obs_mode="omiga")
    rng, steps, states = np.random.default_rng(seed), [], []
    for e in range(episodes):
        r = env.reset(seed=seed + e)
        obs, state = r.obs, r.state
        while True:
            act = rng.uniform(-1, 1, (3, 1)).astype(np.float32)
            s = env.step(act)
            steps.append(_row(obs, act, s.reward, False, obs))
            states.append(state)
            obs, state = s.obs, s.state
            if s.terminated or s.truncated:
                break
        steps.append(_row(obs, np.zeros((3, 1), np.float32), 0.0, True, obs))
        states.append(state)
    return steps, np.asarray(states)


def _row(obs, act, reward, end, state):
    N = len(obs)
    return {
        "observations": obs.astype(np.float32),
        "actions": act,
        "rewards": np.full(N, reward, np.float32),
        "terminals": np.full(N, end),
        "truncations": np.zeros(N, bool),
        "infos": {"state": state.astype(np.float32)},  # OMIGA's s is o
    }


def test_og_marls_conversion_of_omigas_data_keeps_final_rows_and_evaluates(tmp_path):
    from omgmg.cli.train import main as train_cli

    steps, states = omiga_conversion_steps()
    vault = record_vault(tmp_path / "vaults", "omiga", "mamujoco", "3hopper", "Medium-Replay", steps)
    ds = import_vault(vault, tmp_path / "o.zarr")
    assert ds.level == "medium-replay" and ds.spec.options == {"obs_mode": "omiga"} and ds.spec.state_dim == 11
    assert ds.spec.backend == "mujoco-py" and ds.spec.obs_dims == (14, 14, 14)
    assert "from the vault's source 'omiga'" in ds.meta["collection"]["row_convention"]  # no episode is full
    assert ds.n_transitions == len(steps) - 2  # each episode's extra row is its final observation
    rows = np.concatenate([np.concatenate([ep["state"], ep["final_state"][None]]) for ep in iter_episodes(ds)])
    assert np.allclose(rows, states, atol=1e-5)
    trained = CliRunner().invoke(
        train_cli,
        ["train", "--dataset", str(ds.path), "--algo", "bc", "--steps", "10", "--eval-every", "10",
         "--eval-episodes", "1", "--hidden", "16", "--batch-size", "16", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output  # evaluated in the live environment


def test_original_mamujoco_local_observations_train_but_say_why_they_do_not_evaluate(tmp_path):
    from omgmg.collectors.envs import task_for_dataset

    steps, _ = hopper_steps(episodes=1)
    vault = record_vault(tmp_path / "vaults", "og_marl", "mamujoco", "3hopper", "Expert", steps)
    ds = import_vault(vault, tmp_path / "v2.zarr")
    assert ds.spec.backend == "mujoco-py" and validate(ds.path) == []
    with pytest.raises(BackendUnavailable, match="original MaMuJoCo.*evaluate=False"):
        task_for_dataset(ds.spec)


def test_a_state_frozen_within_episodes_is_flagged(tmp_path):
    steps, _ = hopper_steps(episodes=2)
    first = 0
    for i, t in enumerate(steps):  # OG-MARL's ExperienceRecorder keeps the reset info for every step
        t["infos"] = {"state": steps[first]["infos"]["state"]}
        if t["terminals"].all() or t["truncations"].all():
            first = i + 1
    vault = record_vault(tmp_path / "vaults", "og_marl", "gymnasium_mamujoco", "3hopper", "Medium", steps)
    ds = import_vault(vault, tmp_path / "f.zarr")
    assert "ExperienceRecorder" in ds.meta["collection"]["warning"]


def test_names_map_both_ways():
    assert vault_task("gymnasium_mamujoco", "6halfcheetah").task == "HalfCheetah-6x1"
    assert vault_task("smac_v2", "terran_5_vs_5").task == "terran_5v5"
    assert vault_task("smax", "zerg_5_vs_5").backend == "smax"
    with pytest.raises(RequestError, match="SMACv1.*not omgmg tasks"):
        vault_task("smac_v1", "3m")
    with pytest.raises(RequestError, match="race-less smacv2_5_units"):
        vault_task("smax", "smacv2_5_units")
    with pytest.raises(RequestError, match="known are 2halfcheetah"):
        vault_task("gymnasium_mamujoco", "7cheetah")


def test_bad_vaults_get_one_line_and_nothing_is_written(tmp_path, fixture_data, monkeypatch):
    ds = fixture_data["continuous"]
    out = tmp_path / "x.zarr"
    vlt = tmp_path / "vaults" / "omgmg" / "fixture" / "continuous.vlt"
    good = export_vault(ds, vlt)
    export_vault(ds, vlt, uid="Other")

    def refused(src, match, **kw):
        with pytest.raises(DatasetError, match=match):
            import_vault(src, out, **kw)
        assert not out.exists()

    refused(tmp_path / "nowhere", "no vault at")
    refused(tmp_path, "not an OG-MARL vault")
    refused(vlt, r"holds 2 datasets \(Medium, Other\): say which with uid=\.\.\.")
    refused(vlt, "has no dataset 'Expert': it holds Medium, Other", uid="Expert")
    damaged = shutil.copytree(good, tmp_path / "d" / "omgmg" / "fixture" / "continuous.vlt" / "Medium")
    (damaged / "metadata.json").write_text("{not json")
    refused(damaged, "metadata.json is damaged or not flashbax's")
    meta = json.loads((good / "metadata.json").read_text())
    del meta["structure_shape"]["rewards"]
    (damaged / "metadata.json").write_text(json.dumps(meta))
    refused(damaged, "not in OG-MARL's layout: it lacks rewards")
    shutil.rmtree(damaged)
    damaged = shutil.copytree(good, damaged)
    for chunk in (damaged / "d").iterdir():
        chunk.write_bytes(b"\0" * 16)
    refused(damaged, "flashbax could not read the vault .* it is damaged")
    shutil.rmtree(damaged)
    damaged = shutil.copytree(good, damaged)
    (damaged / "omgmg-finals.npz").unlink()
    refused(damaged, "says omgmg exported it, but omgmg-finals.npz is missing")
    foreign = tmp_path / "vaults" / "og_marl" / "smac_v1" / "3m.vlt" / "Good"
    shutil.copytree(good, foreign)
    meta["structure_shape"]["rewards"] = "(1, 10, 3)"
    meta.pop("exported_by")
    (foreign / "metadata.json").write_text(json.dumps(meta))
    refused(foreign, "smac_v1.*not omgmg tasks")
    refused(foreign, "not named after an omgmg level.*level=", task="gymnasium_mamujoco/3hopper")
    monkeypatch.setitem(__import__("sys").modules, "flashbax.vault", None)
    refused(good, r"flashbax, which is not installed .*pip install 'omgmg\[ogmarl\]'")


def test_export_replaces_only_its_own_vault_and_leaves_the_others(tmp_path, fixture_data):
    ds = fixture_data["continuous"]
    vlt = tmp_path / "v.vlt"
    first = export_vault(ds, vlt)
    with pytest.raises(RequestError, match="already exists.*overwrite=True"):
        export_vault(ds, vlt)
    export_vault(ds, vlt, overwrite=True)
    assert read_experience(first)["observations"].shape[0] == ds.n_transitions
    theirs = vlt / "Expert"
    theirs.mkdir()
    (theirs / "metadata.json").write_text(json.dumps({"version": 1.2, "structure_shape": {}}))
    with pytest.raises(DatasetError, match="not a vault omgmg exported"):
        export_vault(ds, vlt, uid="Expert", overwrite=True)
    assert (theirs / "metadata.json").exists()
    assert sorted(p.name for p in vlt.iterdir() if p.is_dir()) == ["Expert", "Medium"]
    assert not list(tmp_path.glob(".*partial"))  # nothing left aside


def test_cli_exports_and_imports_a_vault(tmp_path, fixture_data):
    from omgmg.cli.data import main as data_cli

    ds = fixture_data["discrete"]
    runner = CliRunner()
    exported = runner.invoke(data_cli, ["export", str(ds.path), "--format", "og-marl", "--uid", "Expert"])
    assert exported.exit_code == 0, exported.output
    assert "populate_from_vault(source='omgmg', env_name='fixture', scenario_name='discrete'" in exported.output
    elsewhere = runner.invoke(data_cli, ["export", str(ds.path), "--format=og-marl", f"--out={tmp_path / 'v.vlt'}"])
    assert "Vault(vault_name='v.vlt', vault_uid='Medium'" in elsewhere.output
    vault = ds.path.parent / "vaults" / "omgmg" / "fixture" / "discrete.vlt" / "Expert"
    imported = runner.invoke(data_cli, ["import", "og-marl", str(vault), "--out", str(tmp_path / "i.zarr")])
    assert imported.exit_code == 0, imported.output
    assert "fixture/discrete, medium, 8 episodes" in imported.output  # the level comes from the export
    again = runner.invoke(data_cli, ["import", "og-marl", str(vault), "--out", str(tmp_path / "i.zarr")])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
