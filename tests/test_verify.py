"""Provenance in collected datasets, and `omgmg-data verify` replaying them against the environment."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from omgmg.cli.data import main as data_cli
from omgmg.collectors.collect import CollectRequest, collect
from omgmg.collectors.verify import verify
from omgmg.datakit import DatasetError, open_dataset, update_metadata
from omgmg.datakit.provenance import episode_seed


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    quiet = lambda m: None  # noqa: E731
    requests = {
        "medium-expert": CollectRequest("fixture", "continuous", "medium-expert", episodes=12, train_steps=2000),
        "discrete": CollectRequest("fixture", "discrete", "random", episodes=8),
        "hopper": CollectRequest("mamujoco", "Hopper-3x1", "random", transitions=300, num_envs=4, workers=1),
    }
    for name, req in requests.items():
        req.out = root / f"{name}.zarr"
    return {name: collect(req, on_note=quiet) for name, req in requests.items()}


def test_collected_datasets_record_their_provenance(collected):
    ds = collected["medium-expert"]
    p = ds.meta["collection"]["provenance"]
    assert {"numpy", "torch", "zarr", "omgmg"} <= set(p["packages"])
    assert p["environment"]["constructor"].endswith("FixtureEnv") and p["environment"]["task"] == "fixture/continuous"
    assert [o["width"] for o in p["layouts"]["observations"]] == list(ds.spec.obs_dims)
    # two phases (medium, then expert), each from its own consecutive seeds, covering every episode
    assert len(p["episode_seeds"]) == 2 and sum(c for _, c, _ in p["episode_seeds"]) == ds.n_episodes
    assert episode_seed(p, 0) != episode_seed(p, ds.n_episodes - 1)
    assert ds.meta["behaviour_policy"]["checkpoint_sha256"] is None  # two policies acted: their hashes below
    assert all(len(c["sha256"]) == 64 for c in ds.meta["collection"]["checkpoints"].values())
    hopper = collected["hopper"].meta["collection"]["provenance"]
    assert {"gymnasium", "gymnasium-robotics", "mujoco"} <= set(hopper["packages"])
    assert hopper["environment"]["arguments"] == {"scenario": "Hopper", "agent_conf": "3x1", "agent_obsk": 1}


@pytest.mark.parametrize("name", ["medium-expert", "discrete", "hopper"])
def test_every_stored_episode_replays_exactly(collected, name):
    report = verify(collected[name], episodes=None)
    assert report.ok, [str(m) for m in report.mismatches]
    assert report.episodes == list(range(collected[name].n_episodes)) and report.version_warnings == []


def _tampered(ds, tmp_path, key, row, delta):
    copy = shutil.copytree(ds.path, tmp_path / "t.zarr")
    arr = zarr.open_group(copy, mode="r+")[key]
    values = arr[:]
    values[row] += delta
    arr[:] = values
    return copy


def test_a_changed_reward_or_observation_is_found_at_its_episode_and_step(collected, tmp_path):
    ds = collected["medium-expert"]
    starts = ds.episode_starts()
    row = int(starts[5] + 3)  # episode 5, step 3
    report = verify(_tampered(ds, tmp_path, "steps/reward", row, 0.5), episodes=None)
    assert [str(m).split(":")[0] for m in report.mismatches] == ["episode 5, step 3"]
    assert report.mismatches[0].field == "reward"
    shutil.rmtree(tmp_path / "t.zarr")
    report = verify(_tampered(ds, tmp_path, "steps/obs", row, 0.25), episodes=None)
    # the observation of step 3 is what step 2 led to: found as step 2's next observation
    assert [(m.episode, m.step, m.field) for m in report.mismatches] == [(5, 2, "next obs")]


def test_imported_data_has_no_seeds_and_says_so(tmp_path, collected):
    from omgmg.datakit.omiga import export_omiga, import_omiga

    export_omiga(collected["hopper"], tmp_path / "h.hdf5")
    imported = import_omiga(tmp_path / "h.hdf5", tmp_path / "i.zarr", task="Hopper-3x1", level="random")
    with pytest.raises(DatasetError, match="cannot be replayed: no seeds.*imported from omiga-hdf5"):
        verify(imported)
    out = CliRunner().invoke(data_cli, ["verify", str(imported.path)])
    assert out.exit_code == 2 and "cannot be replayed: no seeds" in out.output


def test_verify_cli_exit_codes_and_version_warnings(collected, tmp_path):
    ds = collected["discrete"]
    ok = CliRunner().invoke(data_cli, ["verify", str(ds.path), "--episodes", "3"])
    assert (
        ok.exit_code == 0
        and "3 of 8 seeded episodes (--episodes all: every one) replayed, every step matches exactly" in ok.output
    )
    copy = shutil.copytree(ds.path, tmp_path / "v.zarr")
    collection = open_dataset(copy).meta["collection"]
    collection["provenance"]["packages"]["numpy"] = "1.0.0"
    update_metadata(copy, collection=collection)
    warned = CliRunner().invoke(data_cli, ["verify", str(copy), "--episodes", "1"])
    assert warned.exit_code == 0 and "numpy: recorded 1.0.0, installed" in warned.output
    bad = _tampered(ds, tmp_path, "steps/reward", 2, 1.0)
    out = CliRunner().invoke(data_cli, ["verify", str(bad), "--episodes", "0"])
    assert out.exit_code == 1 and "mismatch: episode 0, step 2: reward" in out.output and "Traceback" not in out.output
    assert np.isfinite(open_dataset(bad).read("steps/reward")).all()


def test_a_dataset_exported_to_a_vault_and_imported_back_still_replays(collected, tmp_path):
    from omgmg.datakit.ogmarl import export_vault, import_vault

    ds = collected["discrete"]
    back = import_vault(export_vault(ds, tmp_path / "d.vlt"), tmp_path / "back.zarr")
    assert (
        back.meta["collection"]["provenance"]["episode_seeds"] == ds.meta["collection"]["provenance"]["episode_seeds"]
    )
    assert verify(back, episodes=None).ok


@pytest.mark.slow
def test_smax_episodes_replay_exactly_at_the_collections_batch_size(tmp_path):
    """JAX compiles SMAX's step per batch size; a replay at the collection's (recorded) size is exact."""
    req = CollectRequest("smacv2", "protoss_5v5", "random", backend="smax", episodes=6, num_envs=8, out=tmp_path / "s")
    ds = collect(req, on_note=lambda m: None)
    assert ds.meta["collection"]["provenance"]["rollout"] == {"num_envs": 8, "envs_per_simulator_call": 4}
    assert ds.meta["collection"]["provenance"]["environment"]["reward_scale"] == "smacv2"
    report = verify(ds, episodes=None)
    assert report.ok, [str(m) for m in report.mismatches]
