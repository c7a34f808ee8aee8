"""SMACv2-style tasks on JaxMARL's SMAX (``HeuristicEnemySMAX``), vectorised with ``jax.vmap``.

JAX lives only in this module: it is imported when an SMAX env is built, every array leaves as
numpy, and everything else in omgmg is PyTorch.

What we change from SMAX's ``smacv2_{n}_units`` scenario (see also ``omgmg.collectors.envs.smacv2``):

- **Race-only teams.** SMAX draws unit types uniformly from all six of its types. We draw each
  ally from its race's two SMAX types (protoss: stalker/zealot, terran: marine/marauder, zerg:
  zergling/hydralisk) with weights 0.5/0.5, and enemies mirror allies, as in SMACv2.
- **Episode limit 200**, as SMACv2 (SMAX's default is 100). SMAX checks its limit before it counts
  the step, so ``max_steps=199`` gives episodes of at most 200 steps.
- **Terminated vs truncated.** SMAX's ``done`` merges both; a battle decided (one side dead) is a
  termination, reaching the limit with both sides alive is a truncation.
- **Wins.** SMAX's info has no win flag; ``won`` = every enemy dead and at least one ally alive.
- **Rewards on SMACv2's scale** (``reward_scale="smacv2"``, the default). SMAX pays each step the
  enemies' lost health as a fraction of their full health, summed and divided by their number, plus
  ``won_battle_bonus`` (1) on a win: a won battle returns at most 1 + 1 = 2. SMACv2 scales its rewards
  so that the most an episode can return, a won battle, is ``reward_scale_rate`` = 20. We multiply
  SMAX's reward by 20 / (1 + won_battle_bonus) = 10, so a won battle returns 20 here too and a
  value-based method sees returns of SMACv2's size (the Q term of OMGMG's Eq. (10) is otherwise ten
  times smaller next to its BC term). ``reward_scale="smax"`` keeps SMAX's own reward. The scale is
  recorded in each dataset's spec (``options.reward_scale``); datasets without it are on SMAX's scale.
- **One compilation.** SMAX's reset returns weakly typed integer fields (``state.step``) that make a
  jitted step compile again once it sees a stepped state; all leaves are made strongly typed on
  every reset and step, and :meth:`SmaxVectorEnv.reset` warms the jitted functions up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys

import numpy as np

from omgmg.collectors.envs.base import EnvGroup, MultiAgentEnv, Reset, Step, VecStep, VectorEnv
from omgmg.collectors.envs.smacv2 import parse_task, smax_missing
from omgmg.datakit.errors import BackendUnavailable, DatasetError, RequestError
from omgmg.datakit.spec import EPISODE_LIMITS, Discrete, EnvSpec

SMAX_UNIT_TYPES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")  # SMAX's index order
RACE_SMAX_UNITS = {
    "protoss": ("stalker", "zealot"),
    "terran": ("marine", "marauder"),
    "zerg": ("zergling", "hydralisk"),
}
RACE_SMAX_WEIGHTS = (0.5, 0.5)
SMACV2_MAX_RETURN = 20.0  # SMACv2's reward_scale_rate: a won battle returns this much
SMAX_WON_BATTLE_BONUS = 1.0  # HeuristicEnemySMAX's default won_battle_bonus
REWARD_SCALES = {
    # a won battle: all enemy health (1 in SMAX's units) plus the win bonus -> SMACv2's 20
    "smacv2": SMACV2_MAX_RETURN / (1.0 + SMAX_WON_BATTLE_BONUS),
    "smax": 1.0,
}
DEFAULT_REWARD_SCALE = "smacv2"


def reward_factor(reward_scale: str) -> float:
    if reward_scale not in REWARD_SCALES:
        raise RequestError(
            f"unknown SMAX reward_scale {reward_scale!r}: choose smacv2 (a won battle returns 20, as in SMACv2) "
            "or smax (SMAX's own reward: at most 2)"
        )
    return REWARD_SCALES[reward_scale]


@contextlib.contextmanager
def _stdout_silenced():
    """Silence file descriptor 1 (jaxmarl's import writes past ``contextlib.redirect_stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@functools.cache
def _jax():
    why = smax_missing()
    if why:
        raise BackendUnavailable(f"the smax backend cannot run: {why}")
    with _stdout_silenced():  # jaxmarl prints a notice about optional submodules on import
        import jax
        import jax.numpy as jnp
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    return jax, jnp, HeuristicEnemySMAX, map_name_to_scenario


class RaceUnitTypes:
    """SMAX unit-type generator for race-only teams; enemies mirror allies (replaces SMAX's uniform one)."""

    def __init__(self, race: str, n: int):
        jax, jnp, _, _ = _jax()
        self.n = n
        self.types = jnp.array([SMAX_UNIT_TYPES.index(u) for u in RACE_SMAX_UNITS[race]], dtype=jnp.uint8)
        self.logits = jnp.log(jnp.array(RACE_SMAX_WEIGHTS))

    def generate(self, key):
        jax, jnp, _, _ = _jax()
        allies = self.types[jax.random.categorical(key, self.logits, shape=(self.n,))]
        return jnp.concatenate([allies, allies]).astype(jnp.uint8)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("jaxmarl", "jax")}


def smax_arguments(n: int) -> dict:
    """HeuristicEnemySMAX's arguments for a team size n (the scenario is ``map_name_to_scenario`` of its name)."""
    # SMAX tests its limit before counting the step, so max_steps=L allows L + 1 steps: pass L - 1.
    return {
        "scenario": f"smacv2_{n}_units",
        "max_steps": EPISODE_LIMITS["smacv2"] - 1,
        "see_enemy_actions": True,
        "walls_cause_death": True,
        "attack_mode": "closest",
        "won_battle_bonus": SMAX_WON_BATTLE_BONUS,
    }


def construction(task: str, reward_scale: str = DEFAULT_REWARD_SCALE) -> dict:
    """How an SMAX env of this task is built (recorded in every dataset's provenance)."""
    race, n = parse_task(task)
    return {
        "constructor": "jaxmarl.environments.smax.HeuristicEnemySMAX",
        "arguments": smax_arguments(n),
        "unit_type_generator": {
            "allies": list(RACE_SMAX_UNITS[race]),
            "weights": list(RACE_SMAX_WEIGHTS),
            "enemies": "mirror the allies",
        },  # fmt: skip
        "reward_scale": reward_scale,
        "reward_factor": reward_factor(reward_scale),
    }


class _SmaxCore:
    """The jitted, vmapped reset and step shared by the single and the vector env."""

    def __init__(self, task: str, reward_scale: str = DEFAULT_REWARD_SCALE):
        factor = reward_factor(reward_scale)
        jax, jnp, HeuristicEnemySMAX, map_name_to_scenario = _jax()
        race, n = parse_task(task)
        arguments = smax_arguments(n)
        arguments["scenario"] = map_name_to_scenario(arguments["scenario"])
        self.env = env = HeuristicEnemySMAX(**arguments)
        env._env.unit_type_generator = RaceUnitTypes(race, n)
        agents = list(env.agents)
        n_actions = env.action_spaces[agents[0]].n
        obs_dim = env.observation_spaces[agents[0]].shape[0]
        self.spec = EnvSpec(
            suite="smacv2",
            task=f"{race}_{n}v{n}",
            backend="smax",
            agent_ids=tuple(agents),
            obs_dims=(obs_dim,) * n,
            state_dim=int(env.state_size),
            action_spaces=(Discrete(n_actions),) * n,
            episode_limit=EPISODE_LIMITS["smacv2"],
            reports_wins=True,
            options={
                "unit_types": {race: list(RACE_SMAX_UNITS[race])},
                "unit_weights": list(RACE_SMAX_WEIGHTS),
                "start_positions": "surrounded_and_reflect",
                "reward_scale": reward_scale,
            },
            backend_versions=_versions(),
        )

        def strong(tree):  # drop weak types so jitted functions compile once
            return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), tree)

        def arrays(obs, state):
            o = jnp.stack([obs[a] for a in agents]).astype(jnp.float32)  # (N, O)
            avail = env.get_avail_actions(state)
            av = jnp.stack([avail[a] for a in agents]).astype(bool)  # (N, K)
            return o, obs["world_state"].astype(jnp.float32), av

        def reset_one(key):
            obs, state = env.reset(key)
            o, s, av = arrays(obs, state)
            return strong(state), o, s, av

        def seeded_keys(seed):  # env e of a vector reset with seed s starts from PRNGKey(s + e) alone
            k_reset, k_steps = jax.random.split(jax.random.PRNGKey(seed))
            return k_reset, k_steps

        def step_one(key, state, actions, reseed, active):
            """actions (N,) int32; reseed: seed of the next episode, or -1; an inactive env stays put."""
            key_in, state_in = key, state
            key, k_step, k_reset = jax.random.split(key, 3)
            obs, stepped, rewards, dones, _ = env.step_env(k_step, state, {a: actions[i] for i, a in enumerate(agents)})
            o, s, av = arrays(obs, stepped)
            alive = stepped.state.unit_alive
            allies_alive, enemies_alive = alive[:n].any(), alive[n:].any()
            terminated = (~allies_alive | ~enemies_alive) & active
            truncated = dones["__all__"] & ~terminated & active
            won = ~enemies_alive & allies_alive & active
            done = terminated | truncated
            s_reset, s_steps = seeded_keys(jnp.maximum(reseed, 0).astype(jnp.uint32))
            key = jnp.where(done & (reseed >= 0), s_steps, key)
            r_state, r_o, r_s, r_av = reset_one(jnp.where(reseed >= 0, s_reset, k_reset))
            pick = lambda new, old: jax.tree.map(lambda x, y: jnp.where(done, x, y), new, old)  # noqa: E731
            next_state = strong(jax.tree.map(lambda x, y: jnp.where(active, x, y), pick(r_state, stepped), state_in))
            key = jnp.where(active, key, key_in)
            results = (
                pick(r_o, o),
                pick(r_s, s),
                pick(r_av, av),
                rewards[agents[0]] * factor,
                terminated,
                truncated,
                won,
                o,
                s,
                av,
            )
            return key, next_state, jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in results])

        def reset_seeded(seed):
            k_reset, k_steps = seeded_keys(seed)
            return (k_steps, *reset_one(k_reset))

        self.reset = jax.jit(jax.vmap(reset_seeded))
        self.step = jax.jit(jax.vmap(step_one))  # -> keys, states, every result packed in one (E, D) array
        self.jax, self.jnp = jax, jnp
        N, O, S, K = n, obs_dim, self.spec.state_dim, n_actions
        # the packed results, in step_one's order: one transfer per step instead of ten
        self.packed = [
            ("obs", (N, O), np.float32),
            ("state", (S,), np.float32),
            ("avail", (N, K), bool),
            ("reward", (), np.float32),
            ("terminated", (), bool),
            ("truncated", (), bool),
            ("won", (), bool),
            ("final_obs", (N, O), np.float32),
            ("final_state", (S,), np.float32),
            ("final_avail", (N, K), bool),
        ]

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """The (E, D) array of a step as named arrays (E, ...), each its own copy."""
        out, at = {}, 0
        for name, shape, dtype in self.packed:
            size = int(np.prod(shape))
            out[name] = packed[:, at : at + size].reshape(-1, *shape).astype(dtype)
            at += size
        return out


class _SmaxPart:
    """Envs lo:hi of a :class:`SmaxVectorEnv`: their own keys and state batch, stepped by one call of
    the shared jitted step."""

    def __init__(self, core: _SmaxCore, lo: int, hi: int):
        self.core, self.envs, self.n = core, slice(lo, hi), hi - lo
        self.keys = self.state = self.started = None

    def reset(self, seed: int) -> Reset:
        jnp = self.core.jnp
        self.keys, self.state, obs, state, avail = self.core.reset(
            jnp.arange(self.envs.start, self.envs.stop, dtype=jnp.uint32) + seed
        )
        self.last = Reset(np.array(obs), np.array(state), np.array(avail))  # copies: JAX's buffers are read-only
        return Reset(*(x.copy() for x in self.last))

    def step_async(
        self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None
    ) -> None:
        """Dispatch the jitted step and return at once (JAX computes it on its own threads)."""
        if self.state is None:
            raise DatasetError("reset the environment before stepping it")
        n = self.n
        # numpy straight into the jitted step: converting with jnp.asarray first cost 10% of a step
        actions = np.asarray(actions, np.int32).reshape(n, self.core.spec.n_agents)
        reseed = np.full(n, -1, np.int32) if reseed is None else np.asarray(reseed, np.int32)
        on = np.ones(n, bool) if active is None else np.asarray(active, bool)
        out = self.core.step(self.keys, self.state, actions, reseed, on)
        self.keys, self.state = out[0], out[1]
        self.started = (on, out[2])

    def step_wait(self) -> VecStep:
        if self.started is None:
            raise RuntimeError("step_wait() without step_async()")
        on, packed = self.started
        self.started = None
        r = self.core.unpack(np.asarray(packed))
        if not on.all():
            for name, old in zip(("obs", "state", "avail"), self.last):
                r[name][~on] = old[~on]
        self.last = Reset(r["obs"].copy(), r["state"].copy(), r["avail"].copy())
        return VecStep(**r)


class SmaxVectorEnv(VectorEnv):
    """E SMAX envs in one jitted, vmapped step, or in ``parts`` batches stepped by separate calls of
    it (one compilation): while JAX computes one part, the caller can work on another (``groups``)."""

    def __init__(self, task: str, num_envs: int, parts: int = 1, reward_scale: str = DEFAULT_REWARD_SCALE):
        self.core = _SmaxCore(task, reward_scale)
        self.spec, self.num_envs = self.core.spec, num_envs
        parts = max(1, min(parts, num_envs))
        bounds = np.linspace(0, num_envs, parts + 1).round().astype(int)
        self._parts = [_SmaxPart(self.core, int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self._warm: set[int] = set()

    def reset(self, seed: int) -> Reset:
        for p in self._parts:
            if p.n not in self._warm:  # compile the step now, not in the middle of a run
                keys, state, *_ = self.core.reset(self.core.jnp.arange(p.n, dtype=self.core.jnp.uint32))
                self.core.step(
                    keys,
                    state,
                    np.zeros((p.n, self.spec.n_agents), np.int32),  # step_async's argument
                    np.full(p.n, -1, np.int32),
                    np.ones(p.n, bool),
                )  # types: its only compilation
                self._warm.add(p.n)
        parts = [p.reset(seed) for p in self._parts]
        return Reset(*(np.concatenate(x) for x in zip(*parts)))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None) -> VecStep:
        """All envs, one vmapped call per part; an inactive env keeps its state (its rows repeat its
        last result)."""
        self.step_async(actions, active, reseed)
        return self.step_wait()

    def step_async(
        self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None
    ) -> None:
        for p in self._parts:
            p.step_async(*(None if x is None else x[p.envs] for x in (actions, active, reseed)))

    def step_wait(self) -> VecStep:
        parts = [p.step_wait() for p in self._parts]
        if len(parts) == 1:
            return parts[0]
        return VecStep(*(np.concatenate(x) for x in zip(*(dataclasses.astuple(s) for s in parts))))

    def groups(self) -> list[EnvGroup]:
        return [EnvGroup(p.envs, p.step_async, p.step_wait) for p in self._parts]


class SmaxEnv(MultiAgentEnv):
    """A single SMAX env: the vector env with E = 1."""

    def __init__(self, task: str, reward_scale: str = DEFAULT_REWARD_SCALE):
        self.vec = SmaxVectorEnv(task, 1, reward_scale=reward_scale)
        self.spec = self.vec.spec
        self._next_seed = 0

    def reset(self, seed: int | None = None) -> Reset:
        if seed is None:  # continue the env's own RNG: derive from the running key
            keys = self.vec._parts[0].keys
            seed = int(np.asarray(keys[0][-1])) if keys is not None else self._next_seed
        r = self.vec.reset(seed)
        return Reset(r.obs[0], r.state[0], r.avail[0])

    def step(self, actions: np.ndarray) -> Step:
        s = self.vec.step(np.asarray(actions)[None])
        done = bool(s.terminated[0] or s.truncated[0])
        # After an end the vector env has auto-reset; a single env reports the final observation.
        obs, state, avail = (
            (s.final_obs[0], s.final_state[0], s.final_avail[0]) if done else (s.obs[0], s.state[0], s.avail[0])
        )
        return Step(
            obs, state, avail, float(s.reward[0]), bool(s.terminated[0]), bool(s.truncated[0]), {"won": bool(s.won[0])}
        )
