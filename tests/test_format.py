"""The dataset format: write -> validate -> read back bit-exact; atomic, resumable writes; immutable identity."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import zarr
from conftest import ENDS, LENGTHS, continuous_spec, crash, discrete_spec, hand_episodes, write

from omgmg.datakit import (
    DatasetError,
    DatasetWriter,
    InvalidDatasetError,
    iter_episodes,
    open_dataset,
    update_metadata,
    validate,
)
from omgmg.datakit.dataset import partial_path
from omgmg.datakit.errors import OutputError
from omgmg.datakit.format import identity_sha256
from omgmg.datakit.writer import episode_arguments, open_unfinished


@pytest.mark.parametrize("make_spec", [continuous_spec, discrete_spec])
def test_round_trip_is_bit_exact(tmp_path, make_spec):
    spec = make_spec()
    eps = hand_episodes(spec, LENGTHS, ENDS)
    ds = write(tmp_path / "x.zarr", spec, eps)
    assert validate(ds.path) == []
    assert ds.n_episodes == len(LENGTHS) and ds.n_transitions == sum(LENGTHS)
    assert ds.spec == spec  # spaces and agent order survive the JSON round trip
    back = list(iter_episodes(ds))
    assert [b["index"] for b in back] == list(range(len(eps)))
    for ep, b in zip(eps, back):
        for key in ("obs", "state", "actions", "reward", "final_obs", "final_state") + (
            ("avail", "final_avail") if spec.discrete else ()
        ):
            assert b[key].dtype == np.asarray(ep[key]).dtype or key == "actions"
            assert np.array_equal(b[key], ep[key]), key
        L = len(ep["reward"])
        assert b["terminated"].tolist() == [False] * (L - 1) + [ep["terminated"]]
        assert b["truncated"].tolist() == [False] * (L - 1) + [ep["truncated"]]
        assert b["return"] == pytest.approx(float(np.sum(ep["reward"], dtype=np.float64)))
        if spec.reports_wins:
            assert b["won"] == ep["won"]
    stats = ds.meta["stats"]
    returns = [float(np.sum(e["reward"], dtype=np.float64)) for e in eps]
    assert stats["return"]["mean"] == pytest.approx(np.mean(returns))
    assert stats["return"]["std"] == pytest.approx(np.std(returns))
    assert stats["episode_length"]["max"] == max(LENGTHS)
    assert stats["win_rate"] == (pytest.approx(np.mean([e["won"] for e in eps])) if spec.discrete else None)


def test_arrays_are_chunked_along_time_and_compressed(continuous_data):
    ds, _ = continuous_data
    obs = ds.array("steps/obs")
    assert obs.chunks[1:] == obs.shape[1:]  # only the time axis is chunked
    for key in ("steps/state", "steps/actions", "steps/reward", "steps/terminated"):
        assert ds.array(key).chunks[0] == obs.chunks[0], key  # one time-chunk length for all steps/
    assert obs.dtype == np.float32
    assert "zstd" in str(obs.compressors[0])
    assert ds.array("steps/actions").dtype == np.float32
    assert ds.array("steps/terminated").dtype == np.bool_


def test_discrete_actions_are_integers_and_masks_boolean(discrete_data):
    ds, _ = discrete_data
    assert ds.array("steps/actions").dtype == np.int32 and ds.array("steps/actions").shape == (sum(LENGTHS), 2)
    assert ds.array("steps/avail").shape == (sum(LENGTHS), 2, 4)
    assert ds.array("episodes/won").dtype == np.bool_


def test_crash_leaves_no_dataset_under_the_final_name_and_resume_gives_the_same_data(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, LENGTHS * 3, ENDS * 3)
    target = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError):
        with DatasetWriter(target, spec, level="expert", flush_steps=8) as w:
            for k, ep in enumerate(eps):
                if k == 11:
                    w.set_progress({"next_episode": k})
                    raise RuntimeError("collector crashed")
                w.add_episode(**ep)
    assert not target.exists() and partial_path(target).exists()
    with pytest.raises(DatasetError, match="unfinished write"):
        open_dataset(target)

    w = DatasetWriter(target, spec, level="expert", flush_steps=8)  # resume=True is the default
    assert w.n_episodes == 11 and w.progress == {"next_episode": 11}
    for ep in eps[w.n_episodes :]:
        w.add_episode(**ep)
    resumed = w.close()
    reference = write(tmp_path / "ref.zarr", spec, eps, level="expert")
    for key in (
        "steps/obs",
        "steps/actions",
        "steps/reward",
        "steps/terminated",
        "steps/truncated",
        "episodes/length",
        "episodes/final_obs",
    ):
        assert np.array_equal(resumed.read(key), reference.read(key)), key
    assert not partial_path(target).exists()


def test_resume_drops_rows_written_after_the_last_commit(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [4, 4, 4], ["truncated"] * 3)
    target = tmp_path / "t.zarr"
    w = DatasetWriter(target, spec)
    w.add_episode(**eps[0])
    w.flush()  # handed to the background writer ...
    w.sync()  # ... and on disk
    # Simulate a crash in the middle of a flush: steps appended, commit marker not updated.
    g = zarr.open_group(str(partial_path(target)), mode="r+")
    g["steps/obs"].append(eps[1]["obs"], axis=0)
    crash(w)
    w2 = DatasetWriter(target, spec)
    assert (w2.n_episodes, w2.n_transitions) == (1, 4)
    for ep in eps[1:]:
        w2.add_episode(**ep)
    ds = w2.close()
    assert validate(ds.path) == []
    assert np.array_equal(ds.read("steps/obs", 4, 8), eps[1]["obs"])


def test_existing_dataset_is_never_overwritten_without_asking(continuous_data):
    ds, eps = continuous_data
    before = ds.read("steps/obs")
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(ds.path, ds.spec)
    assert np.array_equal(open_dataset(ds.path).read("steps/obs"), before)
    new = write(ds.path, ds.spec, eps[:2], overwrite=True)
    assert new.n_episodes == 2
    assert not any(p.name.endswith(".replaced") for p in ds.path.parent.iterdir())


def test_resuming_with_another_task_is_refused(tmp_path):
    target = tmp_path / "x.zarr"
    w = DatasetWriter(target, continuous_spec())
    w.sync()
    crash(w)
    with pytest.raises(DatasetError, match="another task"):
        DatasetWriter(target, continuous_spec(task="other"))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda ep: ep.update(terminated=False, truncated=False), "must end terminated or truncated"),
        (lambda ep: ep["actions"].__setitem__((0, 1, 0), 0.75), r"steps/actions\[0\]: action outside the action space"),
        (lambda ep: ep["actions"].__setitem__((1, 1, 1), 0.1), "padding past an agent's action dim"),
        (lambda ep: ep["obs"].__setitem__((2, 1, 3), 5.0), "padding past an agent's obs_dims"),
        (lambda ep: ep["state"].__setitem__((1, 0), np.nan), r"steps/state\[1\]: non-finite"),
        (lambda ep: ep.update(obs=ep["obs"][:, :2]), "steps/obs has shape"),
        (lambda ep: ep.update(avail=np.ones((5, 3, 4), bool)), "continuous actions: avail"),
    ],
)
def test_writer_refuses_bad_episodes_with_a_named_problem(tmp_path, mutate, match):
    spec = continuous_spec()
    ep = hand_episodes(spec, [5], ["truncated"])[0]
    mutate(ep)
    w = DatasetWriter(tmp_path / "x.zarr", spec)
    with pytest.raises(DatasetError, match=match):
        w.add_episode(**ep)


def test_writer_refuses_unavailable_discrete_action(tmp_path):
    spec = discrete_spec()
    ep = hand_episodes(spec, [5], ["terminated"])[0]
    ep["avail"][2, 1, :] = [True, False, False, False]
    ep["actions"][2, 1] = 2
    with pytest.raises(DatasetError, match=r"steps/actions\[2\]: action is not available"):
        DatasetWriter(tmp_path / "x.zarr", spec).add_episode(**ep)


def test_identity_keys_cannot_be_edited(continuous_data):
    ds, _ = continuous_data
    with pytest.raises(DatasetError, match="cannot change env"):
        update_metadata(ds.path, env={**ds.meta["env"], "task": "other"})
    meta = update_metadata(ds.path, level="m-expert", collection={"note": "relabelled"})
    assert meta["level"] == "medium-expert"
    assert open_dataset(ds.path).meta["collection"] == {"note": "relabelled"}
    # An edit by hand is detected on open.
    g = zarr.open_group(str(ds.path), mode="r+")
    g.attrs["env"] = {**ds.meta["env"], "task": "other"}
    with pytest.raises(InvalidDatasetError, match="identity keys .* were changed"):
        open_dataset(ds.path)


def test_identity_hash_is_stable_and_covers_spaces():
    a = identity_sha256(continuous_spec())
    assert a == identity_sha256(continuous_spec(backend_versions={"x": "1"}))  # versions are not identity
    assert a != identity_sha256(continuous_spec(obs_dims=(4, 4, 4)))
    assert a != identity_sha256(continuous_spec(options={"obs_mode": "omiga"}))


def test_metadata_is_valid_json_schema_document(continuous_data):
    ds, _ = continuous_data
    meta = json.loads((ds.path / "zarr.json").read_text())["attributes"]
    assert meta["format_version"] == 3 and "behaviour_arrays" not in meta  # none asked for
    assert meta["env"]["obs_dims"] == [4, 3, 4]
    assert meta["env"]["action_spaces"][1] == {"type": "box", "low": [-0.5], "high": [0.5]}
    assert "_writer" not in meta


def test_a_failed_background_append_is_raised_not_lost(tmp_path, monkeypatch):
    spec = continuous_spec()
    eps = hand_episodes(spec, [4, 4], ["truncated"] * 2)
    w = DatasetWriter(tmp_path / "f.zarr", spec)
    w.add_episode(**eps[0])

    def disk_full(blocks, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w, "_append", disk_full)
    w.flush()  # handed to the thread: the error surfaces at the next point that waits
    w.add_episode(**eps[1])
    with pytest.raises(OutputError, match="no space left on the device of .*f.zarr.partial"):
        w.sync()


@pytest.mark.unit
def test_action_bounds_are_built_once_on_the_spec_with_zero_padding():
    low, high, mask = continuous_spec().action_bounds()  # action sizes 2, 1, 2
    assert low.dtype == np.float32 and low.shape == (3, 2)
    assert low.tolist() == [[-1, -2], [-0.5, 0], [-1, -1]] and high.tolist() == [[1, 2], [0.5, 0], [1, 1]]
    assert mask.tolist() == [[1, 1], [1, 0], [1, 1]]
    with pytest.raises(DatasetError, match="discrete actions"):
        discrete_spec().action_bounds()


def test_the_committed_episodes_of_an_unfinished_write_read_back_as_written(tmp_path):
    spec = discrete_spec()
    episodes = hand_episodes(spec, LENGTHS, ENDS)
    w = DatasetWriter(tmp_path / "d.zarr", spec, level="medium")
    for ep in episodes[:3]:
        w.add_episode(**ep)
    w.sync()
    w.add_episode(**episodes[3])  # buffered, not committed
    partial = open_unfinished(tmp_path / "d.zarr")
    assert partial.n_episodes == 3
    read = [episode_arguments(ep) for ep in iter_episodes(partial, stop=2)]
    assert len(read) == 2
    for got, want in zip(read, episodes[:2]):
        assert set(got) == set(want)
        for k in want:
            assert np.array_equal(np.asarray(got[k]), np.asarray(want[k])), k
    crash(w)


def test_the_shared_import_tail_writes_every_episode_or_nothing(tmp_path):
    from omgmg.datakit.importing import Imported, write_imported

    spec = continuous_spec()
    episodes = hand_episodes(spec, LENGTHS, ENDS)
    rows = np.cumsum(LENGTHS)

    def source(fail_at=None):
        for e, ep in enumerate(episodes):
            if e == fail_at:
                raise DatasetError("the source is damaged at episode 3")
            yield ep, int(rows[e])

    seen = []
    imported = Imported(spec, "expert", {"source": "hand"}, tmp_path / "src", int(rows[-1]), source())
    ds = write_imported(imported, tmp_path / "a.zarr", progress=lambda done, total: seen.append((done, total)))
    assert ds.level == "expert" and ds.meta["collection"]["source"] == "hand"
    assert seen == [(int(r), int(rows[-1])) for r in rows]
    for ep, back in zip(episodes, iter_episodes(ds), strict=True):
        assert np.array_equal(ep["obs"], back["obs"]) and np.array_equal(ep["actions"], back["actions"])
        assert np.array_equal(ep["final_state"], back["final_state"])
    (tmp_path / "b.zarr").mkdir()  # something already there (not an omgmg dataset) stays untouched
    (tmp_path / "b.zarr" / "mine.txt").write_text("keep")
    broken = Imported(spec, "expert", {"source": "hand"}, tmp_path / "src", int(rows[-1]), source(fail_at=3))
    with pytest.raises(DatasetError, match="damaged at episode 3"):
        write_imported(broken, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists() and not list(tmp_path.glob(".*partial"))
    with pytest.raises(DatasetError):
        write_imported(broken, tmp_path / "b.zarr", overwrite=True)
    assert (tmp_path / "b.zarr" / "mine.txt").read_text() == "keep"
