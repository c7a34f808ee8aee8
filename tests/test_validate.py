"""Every validation check: corrupt a real store on disk, expect the named problem (and nothing else)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from conftest import continuous_spec, discrete_spec, hand_episodes

from omgmg.datakit import DatasetError, DatasetWriter, InvalidDatasetError, open_dataset, validate


def _group(ds):
    return zarr.open_group(str(ds.path), mode="r+")


def _set(ds, key, index, value):
    arr = _group(ds)[key]
    data = np.asarray(arr[:])
    data[index] = value
    arr[:] = data


def _replace_array(ds, key, data):
    g = _group(ds)
    group, name = key.split("/")
    del g[group][name]
    g[group].create_array(name, data=data)


def _set_attr(ds, path, value):
    g = _group(ds)
    meta = dict(g.attrs)
    node = meta
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    g.attrs.put(meta)


def _only(problems, where, fragment):
    text = "\n".join(map(str, problems))
    assert problems, "expected a problem"
    assert all(p.where == where for p in problems), text
    assert fragment in text, text
    return problems[0]


def test_valid_stores_have_no_problems(continuous_data, discrete_data):
    assert validate(continuous_data[0].path) == []
    assert validate(discrete_data[0].path) == []


def test_non_finite_observation(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/obs", (7, 2, 1), np.inf)
    p = _only(validate(ds.path), "steps/obs", "non-finite value")
    assert p.index == 7


def test_non_finite_reward_and_final_state(continuous_data):
    ds, _ = continuous_data
    _set(ds, "episodes/final_state", (3, 2), np.nan)
    _only(validate(ds.path), "episodes/final_state", "non-finite")


def test_observation_padding_not_zero(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/obs", (4, 1, 3), 0.5)  # agent b has 3 observation entries
    assert _only(validate(ds.path), "steps/obs", "padding").index == 4


def test_continuous_action_out_of_bounds(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/actions", (12, 1, 0), 0.6)  # agent b's bound is 0.5
    p = _only(validate(ds.path), "steps/actions", "outside the action space bounds")
    assert p.index == 12 and "clip" in p.fix


def test_discrete_action_not_allowed_by_mask(discrete_data):
    ds, _ = discrete_data
    avail = np.asarray(ds.read("steps/avail"))
    actions = np.asarray(ds.read("steps/actions"))
    t = 9
    blocked = int(np.flatnonzero(~avail[t, 0])[0]) if (~avail[t, 0]).any() else None
    if blocked is None:
        _set(ds, "steps/avail", (t, 0, actions[t, 0]), False)
        _set(ds, "steps/avail", (t, 0, (actions[t, 0] + 1) % 4), True)
    else:
        _set(ds, "steps/actions", (t, 0), blocked)
    p = _only(validate(ds.path), "steps/actions", "not available")
    assert p.index == t


def test_discrete_action_out_of_range(discrete_data):
    ds, _ = discrete_data
    _set(ds, "steps/actions", (3, 1), 7)
    assert _only(validate(ds.path), "steps/actions", "outside 0..3").index == 3


def test_agent_without_available_action(discrete_data):
    ds, _ = discrete_data
    _set(ds, "episodes/final_avail", (2, 1), False)
    _only(validate(ds.path), "episodes/final_avail", "no available action")


def test_mask_marks_padding_action_available(discrete_data):
    ds, _ = discrete_data
    _set(ds, "steps/avail", (5, 1, 3), True)  # agent b has 3 actions
    _only(validate(ds.path), "steps/avail", "past the agent's action space")


def test_end_flag_in_the_middle_of_an_episode(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/terminated", 2, True)  # episode 0 has 5 steps
    assert _only(validate(ds.path), "steps/terminated", "does not end its episode").index == 2


def test_episode_end_without_flag(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/truncated", 14, False)  # last step of episode 1 (rows 5..14), truncated only
    assert _only(validate(ds.path), "steps/truncated", "neither terminated nor truncated").index == 14


def test_episode_lengths_do_not_sum_to_steps(continuous_data):
    ds, _ = continuous_data
    _set(ds, "episodes/length", 1, 9)
    _only(validate(ds.path), "episodes/length", "sum to 35")


def test_episode_return_does_not_match_rewards(continuous_data):
    ds, _ = continuous_data
    _set(ds, "steps/reward", 20, 100.0)
    problems = validate(ds.path)
    wheres = {p.where for p in problems}
    assert wheres == {"episodes/return"}
    assert problems[0].index == 3  # row 20 lies in episode 3 (rows 16..22)


def test_stats_do_not_match_data(continuous_data):
    ds, _ = continuous_data
    _set_attr(ds, ("stats", "return", "mean"), 12345.0)
    _only(validate(ds.path), "metadata.stats.return", "12345")


def test_win_rate_does_not_match(discrete_data):
    ds, _ = discrete_data
    _set_attr(ds, ("stats", "win_rate"), 0.9)
    _only(validate(ds.path), "metadata.stats.win_rate", "0.9")


def test_transition_count_disagrees_with_arrays(continuous_data):
    ds, _ = continuous_data
    _set_attr(ds, ("stats", "transitions"), 99)
    _only(validate(ds.path), "steps", "metadata.stats.transitions is 99")
    with pytest.raises(InvalidDatasetError, match="stats.transitions"):
        open_dataset(ds.path)  # the cheap check on open catches it too


def test_missing_array(continuous_data):
    ds, _ = continuous_data
    shutil.rmtree(ds.path / "steps" / "reward")
    _only(validate(ds.path), "steps/reward", "array is missing")


def test_wrong_dtype(continuous_data):
    ds, _ = continuous_data
    _replace_array(ds, "steps/reward", np.asarray(ds.read("steps/reward"), np.float64))
    _only(validate(ds.path), "steps/reward", "dtype is float64, expected float32")


def test_shape_disagrees_with_metadata(continuous_data):
    ds, _ = continuous_data
    _replace_array(ds, "steps/obs", np.asarray(ds.read("steps/obs"))[:, :, :3])
    _only(validate(ds.path), "steps/obs", "does not match the env spec")


def test_array_of_wrong_length(continuous_data):
    ds, _ = continuous_data
    _replace_array(ds, "steps/state", np.asarray(ds.read("steps/state"))[:-2])
    _only(validate(ds.path), "steps/state", "has 34 rows but steps/ arrays have 36")


def test_unsupported_format_version(continuous_data):
    ds, _ = continuous_data
    _set_attr(ds, ("format_version",), 4)
    p = _only(validate(ds.path), "metadata.format_version", "not supported")
    assert "[1, 2, 3]" in p.fix


def test_schema_violation(continuous_data):
    ds, _ = continuous_data
    _set_attr(ds, ("level",), "superb")
    _only(validate(ds.path), "metadata.level", "'superb' is not one of")


def test_identity_edited_by_hand(continuous_data):
    ds, _ = continuous_data
    _set_attr(ds, ("env", "task"), "Hopper-3x1")
    _only(validate(ds.path), "metadata.identity_sha256", "changed after writing")


def test_not_a_dataset(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DatasetError, match="not a Zarr v3 store"):
        validate(tmp_path / "empty.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    _only(validate(tmp_path / "plain.zarr"), "metadata", "no omgmg metadata")
    with pytest.raises(DatasetError, match="no dataset at"):
        validate(tmp_path / "missing.zarr")


def test_damaged_zarr_metadata(continuous_data):
    ds, _ = continuous_data
    (ds.path / "zarr.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="could not be opened as a Zarr v3 group"):
        validate(ds.path)


def test_validation_reads_in_blocks(continuous_data, discrete_data):
    # Blocks of 3 rows cut through episodes: boundary flags and returns must still check out.
    assert validate(discrete_data[0].path, block_rows=3) == []
    assert validate(continuous_data[0].path, block_rows=4) == []
    ds, _ = continuous_data
    _set(ds, "steps/obs", (30, 0, 1), np.nan)
    assert validate(ds.path, block_rows=4)[0].index == 30


# ----- format 3: what the behaviour policy did ---------------------------------------------------------------


def _behaviour_store(tmp_path, spec, names=("log_prob", "pre_clip")):
    """A format-3 store whose pre-clip samples run past the bounds and clip to the stored actions."""
    eps = hand_episodes(spec, [5, 3], ["terminated", "truncated"])
    low, high, mask = spec.action_bounds()
    with DatasetWriter(tmp_path / "b.zarr", spec, behaviour_arrays=names) as w:
        for ep in eps:
            L = len(ep["reward"])
            pre = np.linspace(-3, 3, L * spec.n_agents * spec.action_dim, dtype=np.float32)
            pre = pre.reshape(L, spec.n_agents, spec.action_dim) * mask
            ep = {**ep, "actions": np.clip(pre, low, high)}
            extra = {"behaviour_log_prob": np.full((L, spec.n_agents), -1.5, np.float32)}
            if "pre_clip" in names:
                extra["behaviour_pre_clip"] = pre
            w.add_episode(**ep, **extra)
    return open_dataset(tmp_path / "b.zarr")


def test_behaviour_arrays_are_written_read_back_and_checked(tmp_path):
    from omgmg.datakit import TransitionLoader

    spec = continuous_spec()
    ds = _behaviour_store(tmp_path, spec)
    assert ds.meta["behaviour_arrays"] == ["log_prob", "pre_clip"] and validate(ds.path) == []
    pre = ds.read("steps/behaviour_pre_clip")
    low, high, _ = spec.action_bounds()
    assert np.array_equal(np.clip(pre, low, high), ds.read("steps/actions")) and (np.abs(pre) > 2).any()
    batch = TransitionLoader(ds, batch_size=4, seed=0).sample()
    assert batch.behaviour_log_prob.shape == (4, 3) and (batch.behaviour_log_prob == -1.5).all()
    # a pre-clip sample that does not clip to its action, a non-finite log-probability: found, and named
    g = zarr.open_group(str(ds.path), mode="r+")
    bad = pre.copy()
    bad[2, 0, 0] = 0.123
    g["steps/behaviour_pre_clip"][:] = bad
    _only(validate(ds.path), "steps/behaviour_pre_clip", "does not give the stored action")
    g["steps/behaviour_pre_clip"][:] = pre
    logp = ds.read("steps/behaviour_log_prob")
    logp[4, 1] = np.nan
    g["steps/behaviour_log_prob"][:] = logp
    _only(validate(ds.path), "steps/behaviour_log_prob", "non-finite log-probability")


def test_a_writer_takes_behaviour_arrays_exactly_as_declared_and_a_format_2_store_cannot_claim_them(tmp_path):
    spec = continuous_spec()
    ep = hand_episodes(spec, [3], ["terminated"])[0]
    with DatasetWriter(tmp_path / "a.zarr", spec, behaviour_arrays=("log_prob",)) as w:
        with pytest.raises(DatasetError, match="pass behaviour_log_prob exactly when"):
            w.add_episode(**ep)
        with pytest.raises(DatasetError, match="pass behaviour_pre_clip exactly when"):
            w.add_episode(**ep, behaviour_log_prob=np.zeros((3, 3)), behaviour_pre_clip=ep["actions"])
        w.add_episode(**ep, behaviour_log_prob=np.zeros((3, 3)))
    with pytest.raises(DatasetError, match="discrete actions: behaviour_pre_clip applies to continuous"):
        DatasetWriter(tmp_path / "d.zarr", discrete_spec(), behaviour_arrays=("pre_clip",))
    ds = open_dataset(tmp_path / "a.zarr")
    _set_attr(ds, ("format_version",), 2)
    problems = validate(ds.path)
    assert any(p.where == "metadata.behaviour_arrays" and "format 3 added them" in p.message for p in problems)
