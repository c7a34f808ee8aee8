"""SMACv2 tasks (``protoss_5v5``, ``terran_5v5``, ``zerg_5v5``, and 10v10 / 20v20) on two backends.

- ``sc2``: the real game through the ``smacv2`` package and a StarCraft II install, with SMACv2's
  settings: unit types drawn per team with weights 0.45 / 0.45 / 0.10 (the third type, colossus,
  medivac or baneling, never makes up a whole team), enemies mirroring allies, surrounded-and-reflect
  start positions, episode limit 200, win flag ``battle_won``.
- ``smax``: JaxMARL's ``HeuristicEnemySMAX`` on SMACv2-style scenarios (``omgmg.collectors.envs.smax``),
  which installs from PyPI and runs on the CPU.

**SMAX is not SC2.** SMAX has no colossus, medivac or baneling, so its race teams are drawn from
the two remaining types with weights 0.5 / 0.5; its observation and state features, unit stats,
pathing and enemy AI are JaxMARL's reimplementation, not the game's. The backend is part of every
dataset's identity (``env.backend``), so SMAX numbers cannot be mistaken for SC2 numbers.

The default backend is ``sc2`` where the package and the game are both present, else ``smax``
(:func:`choose_backend` says which and why).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np

from omgmg.collectors.envs.base import MultiAgentEnv, Reset, Step
from omgmg.datakit.errors import BackendUnavailable, RequestError
from omgmg.datakit.spec import Discrete, EnvSpec

RACE_UNITS = {  # SMACv2's unit types per race; the third is the rare "exception" type
    "protoss": ("stalker", "zealot", "colossus"),
    "terran": ("marine", "marauder", "medivac"),
    "zerg": ("zergling", "hydralisk", "baneling"),
}
SMACV2_UNIT_WEIGHTS = (0.45, 0.45, 0.10)
TEAM_SIZES = (5, 10, 20)
BACKENDS = ("sc2", "smax")
PAPER_TASKS = ("protoss_5v5", "terran_5v5", "zerg_5v5")


def parse_task(task: str) -> tuple[str, int]:
    """``Protoss_5v5`` / ``protoss_5_vs_5`` -> (``protoss``, 5)."""
    m = re.fullmatch(r"(protoss|terran|zerg)_(\d+)_?v(?:s_)?(\d+)", task.strip().lower())
    if not m or m.group(2) != m.group(3) or int(m.group(2)) not in TEAM_SIZES:
        valid = [f"{r}_{n}v{n}" for n in TEAM_SIZES for r in RACE_UNITS]
        raise RequestError(f"unknown SMACv2 task {task!r}; valid: {', '.join(valid)}")
    return m.group(1), int(m.group(2))


def canonical_task(task: str) -> str:
    race, n = parse_task(task)
    return f"{race}_{n}v{n}"


# ----- which backend ----------------------------------------------------------------------------------


def sc2_path() -> Path:
    return Path(os.environ.get("SC2PATH", Path.home() / "StarCraftII"))


def sc2_missing() -> str | None:
    """Why the sc2 backend cannot run here (None when it can)."""
    if importlib.util.find_spec("smacv2") is None:
        return (
            "the smacv2 package is not installed (it is not on PyPI: install it from its source "
            "repository, oxwhirl/smacv2)"
        )
    if not sc2_path().is_dir():
        return (
            f"StarCraft II was not found at {sc2_path()} (install StarCraft II 4.10 and the SMACv2 maps, "
            "and point SC2PATH at it)"
        )
    return None


def smax_missing() -> str | None:
    if importlib.util.find_spec("jaxmarl") is None:
        return "JaxMARL is not installed: pip install 'omgmg[smax]'"
    return None


def choose_backend(backend: str | None) -> tuple[str, str]:
    """(backend, one line saying why) for a requested backend, or the default when None."""
    if backend is not None and backend not in BACKENDS:
        raise RequestError(f"unknown SMACv2 backend {backend!r}: choose {' or '.join(BACKENDS)}")
    if backend == "sc2":
        why = sc2_missing()
        if why:
            raise BackendUnavailable(
                f"the sc2 backend cannot run: {why}; or choose <<backend=smax>> (JaxMARL's SMAX, no game needed)"
            )
        return "sc2", "using StarCraft II (sc2 backend)"
    if backend == "smax":
        why = smax_missing()
        if why:
            raise BackendUnavailable(f"the smax backend cannot run: {why}")
        return "smax", "using JaxMARL's SMAX (smax backend)"
    why = sc2_missing()
    if why is None:
        return "sc2", "using StarCraft II (sc2 backend; <<backend=smax>> for JaxMARL's SMAX)"
    if smax_missing():
        raise BackendUnavailable(f"no SMACv2 backend can run: {why}; and {smax_missing()}")
    return "smax", f"using JaxMARL's SMAX, not StarCraft II: {why}"


# ----- the real game -----------------------------------------------------------------------------------


def sc2_capability_config(race: str, n: int) -> dict:
    """SMACv2's distribution config for a race and team size (its published 5v5 / 10v10 settings)."""
    return {
        "n_units": n,
        "n_enemies": n,
        "team_gen": {
            "dist_type": "weighted_teams",
            "unit_types": list(RACE_UNITS[race]),
            "exception_unit_types": [RACE_UNITS[race][2]],
            "weights": list(SMACV2_UNIT_WEIGHTS),
            "observe": True,
        },
        "start_positions": {
            "dist_type": "surrounded_and_reflect",
            "p": 0.5,
            "n_enemies": n,
            "map_x": 32,
            "map_y": 32,
        },
    }


def sc2_arguments(race: str, n: int) -> dict:
    """StarCraftCapabilityEnvWrapper's arguments (besides the seed) for a race and team size."""
    return {
        "capability_config": sc2_capability_config(race, n),
        "map_name": f"10gen_{race}",
        "debug": False,
        "conic_fov": False,
        "obs_own_pos": True,
        "use_unit_ranges": True,
        "min_attack_range": 2,
        "continuing_episode": True,  # SMACv2 sets info["episode_limit"] at a time-out only with this on
    }


def construction(task: str) -> dict:
    """How an sc2 env of this task is built, and which StarCraft II builds are installed."""
    race, n = parse_task(task)
    versions = sc2_path() / "Versions"
    return {
        "constructor": "smacv2.env.starcraft2.wrapper.StarCraftCapabilityEnvWrapper",
        "arguments": sc2_arguments(race, n),
        "sc2_builds": sorted(p.name for p in versions.iterdir()) if versions.is_dir() else [],
    }


class SC2Env(MultiAgentEnv):
    """SMACv2 on StarCraft II via ``smacv2.env.starcraft2.wrapper.StarCraftCapabilityEnvWrapper``.

    SMACv2 seeds the game when the env is built; ``reset(seed)`` with a new seed therefore rebuilds
    the env (slow, so vector runners seed once and let later episodes follow the game's RNG).
    """

    def __init__(self, task: str, seed: int = 0):
        why = sc2_missing()
        if why:
            raise BackendUnavailable(f"the sc2 backend cannot run: {why}; or choose <<backend=smax>>")
        self.race, self.n = parse_task(task)
        self._seed, self._steps = seed, 0
        self.env = self._build(seed)
        info = self.env.get_env_info()
        from importlib.metadata import version

        self.spec = EnvSpec(
            suite="smacv2",
            task=f"{self.race}_{self.n}v{self.n}",
            backend="sc2",
            agent_ids=tuple(f"ally_{i}" for i in range(info["n_agents"])),
            obs_dims=(int(info["obs_shape"]),) * info["n_agents"],
            state_dim=int(info["state_shape"]),
            action_spaces=(Discrete(int(info["n_actions"])),) * info["n_agents"],
            episode_limit=int(info["episode_limit"]),
            reports_wins=True,
            options={"unit_weights": list(SMACV2_UNIT_WEIGHTS), "start_positions": "surrounded_and_reflect"},
            backend_versions={"smacv2": version("smacv2")},
        )

    def _build(self, seed: int):
        from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper

        return StarCraftCapabilityEnvWrapper(**sc2_arguments(self.race, self.n), seed=seed)

    def _observe(self) -> Reset:
        obs = np.asarray(self.env.get_obs(), np.float32)  # (N, O)
        state = np.asarray(self.env.get_state(), np.float32)  # (S,)
        avail = np.asarray(self.env.get_avail_actions(), bool)  # (N, K)
        return Reset(obs, state, avail)

    def reset(self, seed: int | None = None) -> Reset:
        if seed is not None and seed != self._seed:
            self.env.close()
            self._seed = seed
            self.env = self._build(seed)
        self.env.reset()
        self._steps = 0
        return self._observe()

    def step(self, actions: np.ndarray) -> Step:
        """SMACv2's step, its meaning kept: the reward as SMACv2 scales it (a won battle returns about 20),
        a decided battle a termination (``info["battle_won"]`` the win), the episode limit a truncation
        (``info["episode_limit"]``; also recognised by the step count where the battle is undecided, in
        case a smacv2 version leaves the flag out), dead agents' zero observations and no-op-only
        available actions passed through as the game gives them."""
        reward, done, info = self.env.step([int(a) for a in np.asarray(actions).reshape(-1)])
        self._steps += 1
        n = self.spec.n_agents
        undecided = (
            not info.get("battle_won", False) and info.get("dead_allies", 0) < n and info.get("dead_enemies", 0) < n
        )
        time_limit = bool(info.get("episode_limit", False)) or (self._steps >= self.spec.episode_limit and undecided)
        o = self._observe()
        terminated = bool(done) and not time_limit
        return Step(
            o.obs,
            o.state,
            o.avail,
            float(reward),
            terminated,
            bool(done) and time_limit,
            {"won": bool(info.get("battle_won", False))},
        )

    def close(self) -> None:
        self.env.close()
