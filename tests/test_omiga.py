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
    ds = import_omiga(tmp_path / "x.hdf5", tmp_path / "x.zarr", task="Hopper-3x1", level="medium", episode_limit=10)
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


def test_export_is_what_the_official_omiga_loader_expects(continuous_data, tmp_path):
    """Re-implements the indexing of OMIGA's ReplayBuffer.load on the exported file."""
    ds, eps = continuous_data
    export_omiga(ds, tmp_path / "x.hdf5")
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        s, o, a, r, d = (np.asarray(f[k]) for k in ("s", "o", "a", "r", "d"))
    assert r.shape == d.shape == (len(o), 1) and s.shape[:2] == o.shape[:2]
    nonterminal = np.flatnonzero(np.logical_and(~d[:, 0].astype(bool), np.arange(len(d)) < len(d) - 1))
    assert len(nonterminal) == ds.n_transitions
    mask = 1 - d[nonterminal + 1, 0]
    o_next = o[nonterminal + 1]
    g = 0
    for ep in eps:
        L = len(ep["reward"])
        assert np.array_equal(o[nonterminal[g : g + L]], ep["obs"])
        assert np.array_equal(a[nonterminal[g : g + L]], ep["actions"])
        assert np.array_equal(o_next[g + L - 1], ep["final_obs"])
        assert mask[g : g + L].tolist() == [1] * (L - 1) + [0]  # OMIGA masks every episode end
        g += L


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
        import_omiga(tmp_path / "missing.hdf5", tmp_path / "m.zarr", task="Hopper-3x1", level="medium")

    omiga_file(tmp_path / "agents.hdf5", [4, 4], r_shape="TN")
    with h5py.File(tmp_path / "agents.hdf5", "r+") as f:
        r = np.asarray(f["r"])
        r[2, 1] += 1
        f["r"][...] = r
    with pytest.raises(DatasetError, match="'r' differs between agents at row 2"):
        import_omiga(tmp_path / "agents.hdf5", tmp_path / "g.zarr", task="Hopper-3x1", level="medium")

    omiga_file(tmp_path / "shape.hdf5", [4])
    with h5py.File(tmp_path / "shape.hdf5", "r+") as f:
        del f["r"]
        f["r"] = np.zeros((5, 2))
    with pytest.raises(DatasetError, match=r"'r' has shape \(5, 2\)"):
        import_omiga(tmp_path / "shape.hdf5", tmp_path / "s.zarr", task="Hopper-3x1", level="medium")

    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        import_omiga(tmp_path / "text.hdf5", tmp_path / "t.zarr", task="Hopper-3x1", level="medium")

    omiga_file(tmp_path / "big.hdf5", [4])
    with h5py.File(tmp_path / "big.hdf5", "r+") as f:
        f["a"][1, 0, 0] = 3.0
    with pytest.raises(DatasetError, match=r"the task.s real bound as action_bound=\.\.\."):
        import_omiga(tmp_path / "big.hdf5", tmp_path / "b.zarr", task="Hopper-3x1", level="medium")
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / ".b.zarr.partial").exists()

    with pytest.raises(DatasetError, match="unknown level"):
        import_omiga(tmp_path / "big.hdf5", tmp_path / "c.zarr", task="Hopper-3x1", level="superb")


def test_state_that_differs_per_agent_is_kept_whole(tmp_path):
    raw = omiga_file(tmp_path / "x.hdf5", [5, 5], per_agent_state=False)
    ds = import_omiga(tmp_path / "x.hdf5", tmp_path / "x.zarr", task="Hopper-3x1", level="medium")
    assert ds.spec.state_dim == N * O
    assert np.array_equal(ds.read("steps/state", 0, 5), raw["s"][:5].reshape(5, -1).astype(np.float32))
    export_omiga(ds, tmp_path / "y.hdf5")
    with h5py.File(tmp_path / "y.hdf5", "r") as f:
        assert np.array_equal(np.asarray(f["s"]), raw["s"].astype(np.float32))
