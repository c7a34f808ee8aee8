"""Where a dataset came from, as its metadata records it (``collection.provenance``).

A dataset proves its provenance with one dict, written by the collector and the importers:

- ``packages``: the versions of the packages that shape the data (the simulators, numpy, torch, omgmg);
- ``environment``: how the environment was built (its constructor and arguments, as the adapter reports
  them in ``MultiAgentEnv.construction``);
- ``layouts``: each agent's observation width (and the padded width), the state width, each agent's
  action space;
- ``episode_seeds``: ``[[first_episode, count, first_seed], ...]``: episode ``first_episode + j`` of a
  range was reset with seed ``first_seed + j`` (a collection rolls out each level phase from
  consecutive seeds); episodes in no range have no recorded seed (behaviour training's episodes,
  imported data);
- ``unknown`` (importers): what the source could not tell.

The behaviour checkpoint's hash is ``behaviour_policy.checkpoint_sha256`` (and ``collection.checkpoints``).
``omgmg-data verify`` rebuilds the environment from this record and replays seeded episodes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from omgmg.datakit.spec import Box, EnvSpec

PACKAGES = (
    "gymnasium",
    "gymnasium-robotics",
    "mujoco",
    "jaxmarl",
    "jax",
    "smacv2",
    "pysc2",
    "flashbax",
    "h5py",
    "numpy",
    "torch",
    "zarr",
    "omgmg",
)


def package_versions(names=PACKAGES) -> dict[str, str]:
    """The installed version of each of ``names`` that is installed."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def version_differences(recorded: dict[str, str]) -> list[str]:
    """One line per package whose installed version differs from the recorded one (or is missing)."""
    installed = package_versions(recorded)
    return [
        f"{name}: recorded {was}, installed {installed.get(name, 'none')}"
        for name, was in sorted(recorded.items())
        if installed.get(name) != was
    ]


def layouts(spec: EnvSpec) -> dict:
    """Each agent's observation and action layout and the state width, from the spec."""
    return {
        "observations": [
            {"agent": a, "width": int(w), "padded_to": spec.obs_dim} for a, w in zip(spec.agent_ids, spec.obs_dims)
        ],
        "state": {"width": spec.state_dim},
        "actions": [
            {"agent": a, **({"low": list(s.low), "high": list(s.high)} if isinstance(s, Box) else {"n": s.n})}
            for a, s in zip(spec.agent_ids, spec.action_spaces)
        ],
    }


def seed_ranges(phases: list[tuple[int, int]], n_episodes: int) -> list[list[int]]:
    """``[[first_episode, count, first_seed], ...]`` from the phases a collection rolled out, each
    (first_episode, first_seed), in order; each phase runs until the next one starts."""
    out = []
    for k, (first, seed) in enumerate(phases):
        end = phases[k + 1][0] if k + 1 < len(phases) else n_episodes
        if end > first:
            out.append([int(first), int(end - first), int(seed)])
    return out


def episode_seed(provenance: dict, episode: int) -> int | None:
    """The reset seed of ``episode``, or None where none was recorded."""
    for first, count, seed in provenance.get("episode_seeds", []):
        if first <= episode < first + count:
            return seed + episode - first
    return None


def seeded_episodes(provenance: dict) -> list[int]:
    """Every episode with a recorded seed, in order."""
    return [e for first, count, _ in provenance.get("episode_seeds", []) for e in range(first, first + count)]
