"""Coverage on the card (OG-MARL's SACo and OACo) and `omgmg-data compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import continuous_spec, discrete_spec, hand_episodes, write

from omgmg.cli.data import main as data_cli
from omgmg.datakit.coverage import compare, coverage, ks_distance


def og_marl_saco(ds) -> float:
    """OG-MARL's get_saco, as its code computes it: np.unique over rounded (state, joint action) rows."""
    state = ds.read("steps/state")
    actions = ds.read("steps/actions").reshape(ds.n_transitions, -1)
    pairs = np.concatenate([state, actions], axis=1).round(4)
    return np.unique(pairs, axis=0).shape[0] / ds.n_transitions


@pytest.mark.parametrize("make_spec", [continuous_spec, discrete_spec])
def test_coverage_counts_distinct_pairs_as_og_marl_does(tmp_path, make_spec):
    spec = make_spec()
    eps = hand_episodes(spec, [6, 4, 5], ["terminated", "truncated", "terminated"])
    once = write(tmp_path / "once.zarr", spec, eps)
    twice = write(tmp_path / "twice.zarr", spec, eps + eps)  # every transition twice
    assert coverage(once)["joint_saco"] == pytest.approx(og_marl_saco(once)) == pytest.approx(1.0)
    assert coverage(twice)["joint_saco"] == pytest.approx(og_marl_saco(twice)) == pytest.approx(0.5)
    assert coverage(twice)["oaco"] == pytest.approx(0.5)


def test_ks_distance_by_hand():
    assert ks_distance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.0
    assert ks_distance(np.array([0.0, 0.0]), np.array([1.0, 1.0])) == 1.0
    assert ks_distance(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0, 5.0, 6.0])) == pytest.approx(0.5)


def test_compare_finds_shared_episodes_and_flags_levels_that_are_the_same_data(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [5, 6, 7, 8, 9, 4], ["terminated"] * 6)
    a = write(tmp_path / "a.zarr", spec, eps[:4], level="medium")
    b = write(tmp_path / "b.zarr", spec, eps[2:], level="expert")
    c = compare(a, b)
    assert c.shared == 2 and c.shared_share == (0.5, 0.5) and c.episodes == (4, 4)
    assert not any("share" in w for w in c.warnings) and not c.notes
    inside = write(tmp_path / "inside.zarr", spec, eps[:2], level="medium")  # medium inside medium-expert
    c = compare(inside, a)
    assert c.shared_share == (1.0, 0.5) and not any("share" in w for w in c.warnings)
    assert c.notes == ["2 of inside.zarr's 2 episodes are also in a.zarr (which holds 4 episodes)"]
    same = write(tmp_path / "same.zarr", spec, eps[:4], level="expert")  # medium's data under another name
    c = compare(a, same)
    assert c.shared_share == (1.0, 1.0) and c.ks == 0.0
    assert any("identical data under two level names" in w for w in c.warnings)
    assert any("nearly the same return distribution" in w for w in c.warnings)


def test_compare_cli_prints_the_overlap_and_writes_one_png(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [5, 6, 7], ["terminated"] * 3)
    a = write(tmp_path / "a.zarr", spec, eps, level="medium")
    b = write(tmp_path / "b.zarr", spec, eps[1:], level="medium-expert")
    out = CliRunner().invoke(data_cli, ["compare", str(a.path), str(b.path), "--plot", str(tmp_path / "c.png")])
    assert out.exit_code == 0, out.output
    assert "2 of 3" in out.output and "2 of 2" in out.output and "largely the same data" in out.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    card = json.loads(CliRunner().invoke(data_cli, ["inspect", str(a.path), "--json"]).output)
    assert card["coverage"]["joint_saco"] == pytest.approx(1.0) and card["coverage"]["decimals"] == 4


def test_compare_counts_every_difference_final_observations_included(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [5] * 217, ["truncated"] * 217)
    a = write(tmp_path / "a.zarr", spec, eps, level="medium")
    changed = [dict(ep) for ep in eps]
    changed[100]["final_obs"] = changed[100]["final_obs"].copy()
    changed[100]["final_obs"][0, 0] += 1.0  # only the last step's next observation differs
    b = write(tmp_path / "b.zarr", spec, changed, level="medium")
    c = compare(a, b)
    assert c.shared == 216 and not any("identical data" in w for w in c.warnings)
    assert any("216 of 217 / 216 of 217" in w for w in c.warnings)  # counts: 99.5% is never shown as 100%
