"""OMIGA HDF5 interop: import the public layout, export it back, round trip bit-exact."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from omgmg.datakit import DatasetError, iter_episodes, validate
from omgmg.datakit.omiga import export_omiga, import_omiga

N, O, A = 3, 7, 2


def omiga_file(path, lengths, limit=10, r_shape="T1", d_shape="T1", trailing=0, seed=0, per_agent_state=True):
    """An OMIGA-layout file: each episode L steps + one d=1 row carrying the final observation."""
    rng = np.random.default_rng(seed)
    rows = sum(L + 1 for L in lengths) + trailing
    o = rng.normal(size=(rows, N, O)).astype(np.float64)  # the public files hold float64
    s_vec = rng.normal(size=(rows, O))
    s = np.repeat(s_vec[:, None], N, axis=1) if per_agent_state else rng.normal(size=(rows, N, O))
    a = rng.uniform(-1, 1, size=(rows, N, A))
    r = rng.normal(size=rows)
    d = np.zeros(rows)
    row = 0
    for L in lengths:
        d[row + L] = 1
        a[row + L] = 0
        r[row + L] = 0
        row += L + 1
    shapes = {"T": lambda x: x, "T1": lambda x: x[:, None], "TN": lambda x: np.repeat(x[:, None], N, axis=1)}
    with h5py.File(path, "w") as f:
        f["o"], f["s"], f["a"] = o, s, a
        f["r"] = shapes[r_shape](r)
        f["d"] = shapes[d_shape](d)
    return dict(o=o, s=s, a=a, r=r, d=d)


@pytest.mark.parametrize("r_shape,d_shape", [("T", "T"), ("T1", "T1"), ("TN", "TN"), ("TN", "T1")])
def test_import_reads_every_shape_variant(tmp_path, r_shape, d_shape):
    lengths = [10, 4, 10, 6]
    raw = omiga_file(tmp_path / "x.hdf5", lengths, r_shape=r_shape, d_shape=d_shape)
    ds = import_omiga(tmp_path / "x.hdf5", tmp_path / "x.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
    assert validate(ds.path) == []
    assert ds.spec.options == {"obs_mode": "omiga"} and ds.spec.backend == "omiga-hdf5"
    assert ds.n_episodes == 4 and ds.n_transitions == sum(lengths)
    row = 0
    for L, ep in zip(lengths, iter_episodes(ds)):
        assert np.array_equal(ep["obs"], raw["o"][row : row + L].astype(np.float32))
        assert np.array_equal(ep["state"], raw["s"][row : row + L, 0].astype(np.float32))
        assert np.array_equal(ep["actions"], raw["a"][row : row + L].astype(np.float32))
        assert np.array_equal(ep["reward"], raw["r"][row : row + L].astype(np.float32))
        assert np.array_equal(ep["final_obs"], raw["o"][row + L].astype(np.float32))
        # the assumption: a full-length episode was truncated by the time limit, a shorter one terminated
        assert bool(ep["terminated"][-1]) == (L < 10) and bool(ep["truncated"][-1]) == (L == 10)
        row += L + 1
    assert "episodes of exactly 10 steps" in ds.meta["collection"]["termination_rule"]


def test_trailing_rows_without_final_row_become_a_truncated_episode(tmp_path):
    raw = omiga_file(tmp_path / "x.hdf5", [5, 3], trailing=4)
    ds = import_omiga(
        tmp_path / "x.hdf5", tmp_path / "x.zarr", task="Hopper-3x1", level="medium", episode_limit=10, rows="final-row"
    )
    last = list(iter_episodes(ds))[-1]
    assert len(last["reward"]) == 3 and last["truncated"][-1] and not last["terminated"][-1]
    assert np.array_equal(last["final_obs"], raw["o"][-1].astype(np.float32))


def test_round_trip_import_export_import_is_identical(tmp_path):
    omiga_file(tmp_path / "x.hdf5", [10, 4, 10, 2, 7])
    first = import_omiga(tmp_path / "x.hdf5", tmp_path / "a.zarr", task="Ant-2x4", level="expert", episode_limit=10)
    export_omiga(first, tmp_path / "y.hdf5")
    second = import_omiga(tmp_path / "y.hdf5", tmp_path / "b.zarr", task="Ant-2x4", level="expert", episode_limit=10)
    for key in (
        "steps/obs",
        "steps/state",
        "steps/actions",
        "steps/reward",
        "steps/terminated",
        "steps/truncated",
        "episodes/length",
        "episodes/return",
        "episodes/final_obs",
        "episodes/final_state",
    ):
        a, b = first.read(key), second.read(key)
        assert a.dtype == b.dtype and np.array_equal(a, b), key


def official_training_inputs(path, batch_size=16, seed=0):
    """What OMIGA's official code (run_mujoco.py, datasets/offline_dataset.py, networks/network.py at
    ZhengYinan-AIR/OMIGA@39851c0) builds from a file, step by step: its ReplayBuffer.load, one sample,
    and the inputs of its actor (obs + one-hot id), Q and V networks and mixer. The mixer is
    ``MixNet(state_dim * n_agents)`` and reads ``states.reshape(-1, state_shape)``, with state_dim the
    environment's observation width: so s must be (T, N, O) like o."""
    import torch

    with h5py.File(path, "r") as f:
        s, o, a, r, d = (np.array(f[k]) for k in ("s", "o", "a", "r", "d"))
    n_agents, state_dim = o.shape[1], o.shape[2]  # run_mujoco.py: env.observation_space[0].shape[0]
    data_size = s.shape[0]
    (nonterminal,) = np.where(np.logical_and(np.logical_not(d[:, 0]), np.arange(data_size) < data_size - 1))
    buf = {
        "o": o[nonterminal],
        "s": s[nonterminal],
        "a": a[nonterminal],
        "r": r[nonterminal].reshape(-1, 1),
        "mask": 1 - d[nonterminal + 1].reshape(-1, 1),
        "s_next": s[nonterminal + 1],
        "o_next": o[nonterminal + 1],
    }
    ind = np.random.default_rng(seed).integers(0, len(buf["o"]), size=batch_size)
    batch = {k: torch.FloatTensor(v[ind]) for k, v in buf.items()}
    one_hot = torch.eye(n_agents).expand(batch_size, -1, -1)
    return {
        "nonterminal": nonterminal,
        "buffer": buf,
        "actor_input": torch.cat((batch["o"], one_hot), dim=-1),  # Actor(num_state + num_agent)
        "mixer_input": batch["s"].reshape(-1, state_dim * n_agents),  # MixNet: states.reshape(-1, state_shape)
        "mixer_next_input": batch["s_next"].reshape(-1, state_dim * n_agents),
        "batch_size": batch_size,
        "widths": (n_agents, state_dim),
    }


def test_export_is_what_the_official_omiga_code_trains_on(continuous_data, tmp_path):
    ds, eps = continuous_data  # local observations of widths 4, 3, 4 (padded to 4)
    export_omiga(ds, tmp_path / "x.hdf5")
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        s, o, r, d = (np.asarray(f[k]) for k in ("s", "o", "r", "d"))
        assert f.attrs["obs_mode"] == "local" and list(f.attrs["obs_dims"]) == [4, 3, 4]
    assert s.shape == o.shape and np.array_equal(s, o)  # OMIGA's environment: get_state() is get_obs()
    assert r.shape == d.shape == (len(o), 1) and o.dtype == np.float32
    inputs = official_training_inputs(tmp_path / "x.hdf5")
    B, (n, width) = inputs["batch_size"], inputs["widths"]
    assert inputs["actor_input"].shape == (B, n, width + n)
    assert inputs["mixer_input"].shape == inputs["mixer_next_input"].shape == (B, n * width)  # one row per sample
    buf, g = inputs["buffer"], 0
    assert len(buf["o"]) == ds.n_transitions
    for ep in eps:
        L = len(ep["reward"])
        assert np.array_equal(buf["o"][g : g + L], ep["obs"])
        assert np.array_equal(buf["a"][g : g + L], ep["actions"])
        assert np.array_equal(buf["o_next"][g + L - 1], ep["final_obs"])
        assert buf["mask"][g : g + L, 0].tolist() == [1] * (L - 1) + [0]  # OMIGA masks every episode end
        g += L


def test_our_export_imports_back_with_its_state_widths_and_layout(continuous_data, tmp_path):
    ds, _ = continuous_data
    export_omiga(ds, tmp_path / "x.hdf5")
    back = import_omiga(tmp_path / "x.hdf5", tmp_path / "b.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
    assert back.spec.obs_dims == ds.spec.obs_dims == (4, 3, 4) and back.spec.options == {}  # local, as collected
    assert back.spec.action_spaces == ds.spec.action_spaces  # each agent's own size and bounds (2, 1, 2)
    assert back.spec.state_dim == ds.spec.state_dim
    for key in ("steps/obs", "steps/state", "steps/actions", "steps/reward", "episodes/final_state"):
        assert np.array_equal(back.read(key), ds.read(key)), key
    assert validate(back.path) == []


def test_export_refuses_discrete_and_existing_output(discrete_data, continuous_data, tmp_path):
    with pytest.raises(DatasetError, match="continuous actions"):
        export_omiga(discrete_data[0], tmp_path / "d.hdf5")
    (tmp_path / "c.hdf5").write_text("keep me")
    with pytest.raises(DatasetError, match="already exists"):
        export_omiga(continuous_data[0], tmp_path / "c.hdf5")
    assert (tmp_path / "c.hdf5").read_text() == "keep me"


def test_bad_files_get_clear_errors(tmp_path):
    with h5py.File(tmp_path / "missing.hdf5", "w") as f:
        f["o"] = np.zeros((3, N, O))
    with pytest.raises(DatasetError, match=r"lacks the OMIGA keys \['s', 'a', 'r', 'd'\]"):
        import_omiga(
            tmp_path / "missing.hdf5", tmp_path / "m.zarr", task="Hopper-3x1", level="medium", rows="final-row"
        )

    omiga_file(tmp_path / "agents.hdf5", [4, 4], r_shape="TN")
    with h5py.File(tmp_path / "agents.hdf5", "r+") as f:
        r = np.asarray(f["r"])
        r[2, 1] += 1
        f["r"][...] = r
    with pytest.raises(DatasetError, match="'r' differs between agents at row 2"):
        import_omiga(tmp_path / "agents.hdf5", tmp_path / "g.zarr", task="Hopper-3x1", level="medium", rows="final-row")

    omiga_file(tmp_path / "shape.hdf5", [4])
    with h5py.File(tmp_path / "shape.hdf5", "r+") as f:
        del f["r"]
        f["r"] = np.zeros((5, 2))
    with pytest.raises(DatasetError, match=r"'r' has shape \(5, 2\)"):
        import_omiga(tmp_path / "shape.hdf5", tmp_path / "s.zarr", task="Hopper-3x1", level="medium", rows="final-row")

    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        import_omiga(tmp_path / "text.hdf5", tmp_path / "t.zarr", task="Hopper-3x1", level="medium", rows="final-row")

    omiga_file(tmp_path / "big.hdf5", [4])
    with h5py.File(tmp_path / "big.hdf5", "r+") as f:
        f["a"][1, 0, 0] = 3.0
    with pytest.raises(DatasetError, match=r"the task.s real bound as action_bound=\.\.\."):
        import_omiga(tmp_path / "big.hdf5", tmp_path / "b.zarr", task="Hopper-3x1", level="medium", rows="final-row")
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / ".b.zarr.partial").exists()

    with pytest.raises(DatasetError, match="unknown level"):
        import_omiga(tmp_path / "big.hdf5", tmp_path / "c.zarr", task="Hopper-3x1", level="superb", rows="final-row")


def test_state_that_differs_per_agent_is_kept_whole(tmp_path):
    raw = omiga_file(tmp_path / "x.hdf5", [5, 5], per_agent_state=False)
    ds = import_omiga(tmp_path / "x.hdf5", tmp_path / "x.zarr", task="Hopper-3x1", level="medium", rows="final-row")
    assert ds.spec.state_dim == N * O
    assert np.array_equal(ds.read("steps/state", 0, 5), raw["s"][:5].reshape(5, -1).astype(np.float32))
    export_omiga(ds, tmp_path / "y.hdf5")
    with h5py.File(tmp_path / "y.hdf5", "r") as f:
        assert np.array_equal(np.asarray(f["s"]), raw["s"].astype(np.float32))  # the source's s, as it came
    again = import_omiga(tmp_path / "y.hdf5", tmp_path / "y.zarr", task="Hopper-3x1", level="medium")
    export_omiga(again, tmp_path / "z.hdf5")
    with h5py.File(tmp_path / "z.hdf5", "r") as f:
        assert np.array_equal(np.asarray(f["s"]), raw["s"].astype(np.float32))


def test_collect_in_omigas_layout_exports_for_omiga_and_imports_back_to_train_and_evaluate(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from omgmg.cli.data import main as data_cli
    from omgmg.cli.train import main as train_cli
    from omgmg.datakit import open_dataset

    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    argv = ["collect", "mamujoco", "Hopper-3x1", "--level", "random", "--transitions", "300", "--obs-mode", "omiga"]
    assert CliRunner().invoke(data_cli, [*argv, "--workers", "1"]).exit_code == 0
    path = tmp_path / "home" / "datasets" / "mamujoco-Hopper-3x1-gymnasium-robotics-omiga-random-seed0.zarr"
    ds = open_dataset(path)
    assert ds.spec.options == {"obs_mode": "omiga"} and ds.spec.obs_dims == (14, 14, 14)  # 11 + one-hot of 3
    out = CliRunner().invoke(data_cli, ["export", str(path), "--format", "omiga"])
    assert out.exit_code == 0, out.output
    exported = path.parent / "Hopper-v2-3x1-random.hdf5"  # the name OMIGA's code loads
    with h5py.File(exported, "r") as f:
        assert f.attrs["obs_mode"] == "omiga" and np.array_equal(np.asarray(f["s"]), np.asarray(f["o"]))
    assert official_training_inputs(exported)["mixer_input"].shape == (16, 3 * 14)
    back = import_omiga(exported, tmp_path / "back.zarr", task="Hopper-3x1", level="random")
    assert back.spec.options == {"obs_mode": "omiga"} and back.spec.state_dim == ds.spec.state_dim == 11
    trained = CliRunner().invoke(
        train_cli,
        ["train", "--dataset", str(back.path), "--algo", "bc", "--steps", "10", "--eval-every", "10",
         "--eval-episodes", "1", "--hidden", "16", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output  # evaluated in the live environment, no --no-eval
    assert "final" in trained.output


def omiga_environment_file(path, episodes=2, seed=0):
    """A file made the way OMIGA's environment makes one: real Hopper-3x1 rollouts in OMIGA's
    observation layout, float64, s == o, an extra d = 1 row per episode; returns the true states."""
    from omgmg.collectors.envs import make_env

    env = make_env("mamujoco/Hopper-3x1", obs_mode="omiga")
    rng = np.random.default_rng(seed)
    rows, states = {k: [] for k in "oard"}, []
    for e in range(episodes):
        r = env.reset(seed=seed + e)
        obs, state = r.obs, r.state
        while True:
            act = rng.uniform(-1, 1, (3, 1))
            step = env.step(act.astype(np.float32))
            for k, v in zip("oard", (obs, act, step.reward, 0.0)):
                rows[k].append(v)
            states.append(state)
            obs, state = step.obs, step.state
            if step.terminated or step.truncated:
                break
        for k, v in zip("oard", (obs, np.zeros((3, 1)), 0.0, 1.0)):
            rows[k].append(v)
        states.append(state)
    o = np.asarray(rows["o"], np.float64)
    with h5py.File(path, "w") as f:
        f["o"], f["s"], f["a"] = o, o, np.asarray(rows["a"], np.float64)
        f["r"], f["d"] = np.asarray(rows["r"])[:, None], np.asarray(rows["d"])[:, None]
    return np.asarray(states)


def test_a_file_in_omigas_own_layout_imports_with_the_environments_state_and_evaluates(tmp_path):
    from click.testing import CliRunner

    from omgmg.cli.train import main as train_cli

    states = omiga_environment_file(tmp_path / "Hopper-v2-3x1-random.hdf5")
    ds = import_omiga(
        tmp_path / "Hopper-v2-3x1-random.hdf5", tmp_path / "h.zarr", task="Hopper-3x1", level="random", rows="final-row"
    )
    assert ds.spec.options == {"obs_mode": "omiga"} and ds.spec.obs_dims == (14, 14, 14) and ds.spec.state_dim == 11
    assert "OMIGA's" in ds.meta["collection"]["observation_layout"] and validate(ds.path) == []
    rows = np.concatenate([np.concatenate([ep["state"], ep["final_state"][None]]) for ep in iter_episodes(ds)])
    assert np.allclose(rows, states, atol=1e-5)  # znorm(o_0[:S]) is the environment's own state
    trained = CliRunner().invoke(
        train_cli,
        ["train", "--dataset", str(ds.path), "--algo", "omgmg", "--steps", "10", "--eval-every", "10",
         "--eval-episodes", "1", "--hidden", "16", "--batch-size", "16", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output  # the live environment takes the policy: no --no-eval


def test_the_row_convention_is_detected_from_full_episodes_asked_for_otherwise_and_recorded(tmp_path):
    omiga_file(tmp_path / "a.hdf5", [10, 4, 10], limit=10)  # final rows: a full episode spans 11 rows
    ds = import_omiga(tmp_path / "a.hdf5", tmp_path / "a.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
    assert ds.meta["collection"]["row_convention"].startswith("final-row") and ds.n_transitions == 24
    # last-step rows: d = 1 on the last real step, so a full episode spans exactly 10 rows
    rng = np.random.default_rng(0)
    lengths, rows = [10, 3, 10], 23
    d = np.zeros(rows)
    d[np.cumsum(lengths) - 1] = 1
    o = rng.normal(size=(rows, N, O))
    with h5py.File(tmp_path / "b.hdf5", "w") as f:
        f["o"], f["s"], f["a"] = o, np.repeat(o[:, :1], N, axis=1), rng.uniform(-1, 1, (rows, N, A))
        f["r"], f["d"] = rng.normal(size=(rows, 1)), d[:, None]
    ds = import_omiga(tmp_path / "b.hdf5", tmp_path / "b.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
    assert ds.meta["collection"]["row_convention"].startswith("last-step") and ds.n_transitions == 23
    eps = list(iter_episodes(ds))
    assert [len(e["reward"]) for e in eps] == lengths
    assert [bool(e["truncated"][-1]) for e in eps] == [True, False, True]  # 10-step episodes stay truncations
    assert np.array_equal(eps[1]["final_obs"], o[12].astype(np.float32))  # its last observation stands in
    omiga_file(tmp_path / "c.hdf5", [4, 6], limit=10)  # no episode reaches the limit: either convention fits
    with pytest.raises(DatasetError, match="cannot tell whether.*rows='final-row'.*rows='last-step'"):
        import_omiga(tmp_path / "c.hdf5", tmp_path / "c.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
    assert not (tmp_path / "c.zarr").exists()


def test_a_damaged_omgmg_export_is_one_line_and_writes_nothing(continuous_data, tmp_path):
    export_omiga(continuous_data[0], tmp_path / "x.hdf5")
    damage = {
        "widths": lambda f: f.attrs.__setitem__("obs_dims", [99, 1, 2]),
        "no-widths": lambda f: f.attrs.__delitem__("obs_dims"),
        "short-state": lambda f: (f.__delitem__("omgmg/state"), f.create_dataset("omgmg/state", data=np.zeros((3, 5)))),
        "bounds": lambda f: f.attrs.__setitem__("action_low", np.zeros((2, 2))),
    }
    for name, edit in damage.items():
        path = tmp_path / f"{name}.hdf5"
        path.write_bytes((tmp_path / "x.hdf5").read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        with pytest.raises(DatasetError, match="says omgmg exported it, but .*: the file is damaged"):
            import_omiga(path, tmp_path / f"{name}.zarr", task="Hopper-3x1", level="medium", action_bound=2.0)
        assert not (tmp_path / f"{name}.zarr").exists() and not (tmp_path / f".{name}.zarr.partial").exists()
