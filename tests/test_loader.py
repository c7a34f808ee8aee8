"""The shared loader: next observations, terminal flags and masks checked against hand-built episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ENDS, LENGTHS, continuous_spec, discrete_spec, hand_episodes, write

from omgmg.collectors.fixtures import make_fixture
from omgmg.datakit import DatasetError, TransitionLoader, iter_episodes


def expected_rows(eps):
    """Reference per global row g: next obs marker, next state marker, terminated, truncated, start."""
    ref, g = {}, 0
    for e, ep in enumerate(eps):
        L = len(ep["reward"])
        for t in range(L):
            last = t == L - 1
            ref[g + t] = dict(
                next_obs0=float(-(e + 1)) if last else float(g + t + 1),
                next_state0=float(-(e + 1)) if last else float(g + t + 1),
                terminated=float(last and ep["terminated"]),
                truncated=float(last and ep["truncated"] and not ep["terminated"]),
                start=float(t == 0),
                reward=float(ep["reward"][t]),
                e=e,
                t=t,
            )
        g += L
    return ref


def check_batch(batch, eps):
    ref = expected_rows(eps)
    rows = batch.obs[:, 0, 0].round().long().tolist()  # agent 0's obs[0] is the global row
    for b, g in enumerate(rows):
        r = ref[g]
        assert batch.next_obs[b, 0, 0].item() == r["next_obs0"], (g, r)
        assert batch.next_obs[b, 1, 0].item() == (
            r["next_obs0"] + 1000 if r["next_obs0"] >= 0 else r["next_obs0"] - 1000
        )  # agent axis order kept
        assert batch.state[b, 0].item() == g
        assert batch.next_state[b, 0].item() == r["next_state0"]
        assert batch.terminated[b].item() == r["terminated"]
        assert batch.truncated[b].item() == r["truncated"]
        assert batch.episode_start[b].item() == r["start"]
        assert batch.reward[b].item() == pytest.approx(r["reward"])
        ep = eps[r["e"]]
        assert torch.equal(batch.actions[b].cpu(), torch.as_tensor(ep["actions"][r["t"]]).to(batch.actions.dtype))
        t, L = r["t"], len(ep["reward"])
        next_action = ep["actions"][t + 1] if t < L - 1 else np.zeros_like(ep["actions"][t])  # none after the end
        assert torch.equal(batch.next_actions[b].cpu(), torch.as_tensor(next_action).to(batch.actions.dtype))
        if batch.avail is not None:
            t, L = r["t"], len(ep["reward"])
            nxt = ep["final_avail"] if t == L - 1 else ep["avail"][t + 1]
            assert torch.equal(batch.avail[b], torch.as_tensor(ep["avail"][t]))
            assert torch.equal(batch.next_avail[b], torch.as_tensor(nxt))
    return set(rows)


@pytest.mark.parametrize("data", ["continuous_data", "discrete_data"])
def test_in_memory_batches_match_hand_built_episodes(data, request):
    ds, eps = request.getfixturevalue(data)
    loader = TransitionLoader(ds, batch_size=64, seed=3)
    seen = set()
    for _ in range(20):
        b = loader.sample()
        assert b.obs.shape == (64, ds.spec.n_agents, ds.spec.obs_dim)
        assert b.obs.dtype == torch.float32 and b.reward.shape == (64,)
        seen |= check_batch(b, eps)
    assert seen == set(range(sum(LENGTHS)))  # every transition is reachable


def test_truncation_bootstraps_and_termination_does_not(continuous_data):
    """A time-limit end keeps terminated = 0 and a real next observation (the stored final obs)."""
    ds, eps = continuous_data
    b = TransitionLoader(ds, batch_size=4096, seed=0).sample()
    ends = b.next_obs[:, 0, 0] < 0  # rows whose next observation is an episode's final observation
    episode = (-b.next_obs[ends, 0, 0]).long() - 1
    expect_term = torch.tensor([eps[e]["terminated"] for e in episode.tolist()], dtype=torch.float32)
    assert torch.equal(b.terminated[ends], expect_term)
    assert (b.terminated[~ends] == 0).all() and (b.truncated[~ends] == 0).all()
    # episode 3 ended with both flags: termination wins, truncated reads 0
    both = episode == 3
    assert both.any() and (b.terminated[ends][both] == 1).all() and (b.truncated[ends][both] == 0).all()


def test_same_seed_same_batches_other_seed_other_batches(continuous_data):
    ds, _ = continuous_data
    a = [TransitionLoader(ds, batch_size=16, seed=7).sample().obs for _ in range(1)]
    b = [TransitionLoader(ds, batch_size=16, seed=7).sample().obs for _ in range(1)]
    c = TransitionLoader(ds, batch_size=16, seed=8).sample().obs
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c)


def test_sampling_is_uniform(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, [10] * 20, ["truncated"] * 20)
    ds = write(tmp_path / "u.zarr", spec, eps)
    loader = TransitionLoader(ds, batch_size=4000, seed=0)
    rows = torch.cat([loader.sample().state[:, 0] for _ in range(25)]).long()
    counts = torch.bincount(rows, minlength=200).float()
    assert counts.min() > 0
    # 100k draws over 200 rows: expected 500 each, a chi-square test at a generous threshold
    chi2 = ((counts - 500) ** 2 / 500).sum().item()
    assert chi2 < 300, chi2


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["continuous", "discrete"])
def test_streaming_matches_in_memory_semantics_across_block_boundaries(tmp_path, shape):
    spec = continuous_spec() if shape == "continuous" else discrete_spec()
    lengths = [7, 10, 3, 10, 1, 9, 10, 4] * 12
    ends = ["terminated", "truncated"] * 48
    eps = hand_episodes(spec, lengths, ends)
    ds = write(tmp_path / "s.zarr", spec, eps, chunk_rows=16)
    loader = TransitionLoader(ds, batch_size=64, seed=1, streaming=True, block_rows=32, resident_blocks=3, swap_every=2)
    assert loader.block_rows == 32
    seen = set()
    for _ in range(300):
        b = loader.sample()
        seen |= check_batch(b, eps)
        assert loader.resident_transitions <= 3 * 32  # memory stays bounded
    assert seen == set(range(sum(lengths)))  # every transition, incl. those at block edges, gets drawn


@pytest.mark.slow
def test_streaming_is_deterministic_for_a_seed(tmp_path):
    ds = make_fixture(tmp_path / "f.zarr", "continuous", episodes=30, chunk_rows=64)
    draws = []
    for seed in (5, 5, 6):
        loader = TransitionLoader(
            ds, batch_size=16, seed=seed, streaming=True, block_rows=128, resident_blocks=2, swap_every=1
        )
        draws.append(torch.cat([loader.sample().state for _ in range(60)]))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_initial_states_are_episode_starts(continuous_data):
    ds, eps = continuous_data
    init = TransitionLoader(ds, batch_size=256, seed=0).sample_initial()
    starts = set(np.cumsum([0] + LENGTHS[:-1]).tolist())
    assert set(init.state[:, 0].long().tolist()) == starts


def test_streaming_initial_states_are_resident_episode_starts(tmp_path):
    spec = continuous_spec()
    lengths = [7, 10, 3] * 20
    eps = hand_episodes(spec, lengths, ["truncated"] * 60)
    ds = write(tmp_path / "s.zarr", spec, eps, chunk_rows=16)
    loader = TransitionLoader(ds, batch_size=64, seed=0, streaming=True, block_rows=32, resident_blocks=2)
    starts = set(np.cumsum([0] + lengths[:-1]).tolist())
    for _ in range(30):
        loader.sample()
        rows = set(loader.sample_initial().state[:, 0].long().tolist())
        assert rows and rows <= starts


def test_episode_iterator_reads_in_blocks(tmp_path):
    spec = discrete_spec()
    eps = hand_episodes(spec, LENGTHS * 4, ENDS * 4)
    ds = write(tmp_path / "e.zarr", spec, eps)
    back = list(iter_episodes(ds, block_rows=8))
    assert len(back) == len(eps)
    for ep, b in zip(eps, back):
        assert np.array_equal(ep["obs"], b["obs"]) and np.array_equal(ep["final_avail"], b["final_avail"])
        assert b["won"] == ep["won"]


def test_empty_dataset_and_bad_batch_size_are_refused(tmp_path, continuous_data):
    ds = write(tmp_path / "empty.zarr", continuous_spec(), [])
    with pytest.raises(DatasetError, match="holds no transitions"):
        TransitionLoader(ds)
    with pytest.raises(DatasetError, match="batch_size"):
        TransitionLoader(continuous_data[0], batch_size=0)
