"""SMACv2-style tasks on JaxMARL's SMAX (``HeuristicEnemySMAX``), vectorised with ``jax.vmap``.

JAX lives only in this module: it is imported when an SMAX env is built, every array leaves as
numpy, and everything else in omgmg is PyTorch.

What we change from SMAX's ``smacv2_{n}_units`` scenario (see also ``collectors.envs.smacv2``):

- **Race-only teams.** SMAX draws unit types uniformly from all six of its types. We draw each
  ally from its race's two SMAX types (protoss: stalker/zealot, terran: marine/marauder, zerg:
  zergling/hydralisk) with weights 0.5/0.5, and enemies mirror allies, as in SMACv2.
- **Episode limit 200**, as SMACv2 (SMAX's default is 100). SMAX checks its limit before it counts
  the step, so ``max_steps=199`` gives episodes of at most 200 steps.
- **Terminated vs truncated.** SMAX's ``done`` merges both; a battle decided (one side dead) is a
  termination, reaching the limit with both sides alive is a truncation.
- **Wins.** SMAX's info has no win flag; ``won`` = every enemy dead and at least one ally alive.
- **One compilation.** SMAX's reset returns weakly typed integer fields (``state.step``) that make a
  jitted step compile again once it sees a stepped state; all leaves are made strongly typed on
  every reset and step, and :meth:`SmaxVectorEnv.reset` warms the jitted functions up.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np

from collectors.envs.base import MultiAgentEnv, Reset, Step, VecStep, VectorEnv
from collectors.envs.smacv2 import EPISODE_LIMIT, parse_task, smax_missing
from datakit.errors import DatasetError
from datakit.spec import Discrete, EnvSpec

SMAX_UNIT_TYPES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")  # SMAX's index order
RACE_SMAX_UNITS = {"protoss": ("stalker", "zealot"), "terran": ("marine", "marauder"), "zerg": ("zergling", "hydralisk")}
RACE_SMAX_WEIGHTS = (0.5, 0.5)


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


@functools.lru_cache(maxsize=None)
def _jax():
    why = smax_missing()
    if why:
        raise DatasetError(f"the smax backend cannot run: {why}")
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


class _SmaxCore:
    """The jitted, vmapped reset and step shared by the single and the vector env."""

    def __init__(self, task: str):
        jax, jnp, HeuristicEnemySMAX, map_name_to_scenario = _jax()
        race, n = parse_task(task)
        # SMAX tests its limit before counting the step, so max_steps=L allows L + 1 steps: pass L - 1.
        self.env = env = HeuristicEnemySMAX(scenario=map_name_to_scenario(f"smacv2_{n}_units"), max_steps=EPISODE_LIMIT - 1,
                                            see_enemy_actions=True, walls_cause_death=True, attack_mode="closest")
        env._env.unit_type_generator = RaceUnitTypes(race, n)
        agents = list(env.agents)
        n_actions = env.action_spaces[agents[0]].n
        obs_dim = env.observation_spaces[agents[0]].shape[0]
        self.spec = EnvSpec(
            suite="smacv2", task=f"{race}_{n}v{n}", backend="smax", agent_ids=tuple(agents),
            obs_dims=(obs_dim,) * n, state_dim=int(env.state_size), action_spaces=(Discrete(n_actions),) * n,
            episode_limit=EPISODE_LIMIT, reports_wins=True,
            options={"unit_types": {race: list(RACE_SMAX_UNITS[race])}, "unit_weights": list(RACE_SMAX_WEIGHTS),
                     "start_positions": "surrounded_and_reflect"},
            backend_versions=_versions())

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
            return (key, next_state, pick(r_o, o), pick(r_s, s), pick(r_av, av), rewards[agents[0]].astype(jnp.float32),
                    terminated, truncated, won, o, s, av)

        def reset_seeded(seed):
            k_reset, k_steps = seeded_keys(seed)
            return (k_steps, *reset_one(k_reset))

        self.reset = jax.jit(jax.vmap(reset_seeded))
        self.step = jax.jit(jax.vmap(step_one))
        self.jax, self.jnp = jax, jnp


class SmaxVectorEnv(VectorEnv):
    """E SMAX envs in one jitted, vmapped step (2 cores saturate at about 16 envs)."""

    def __init__(self, task: str, num_envs: int):
        self.core = _SmaxCore(task)
        self.spec, self.num_envs = self.core.spec, num_envs
        self._keys = self._state = None

    def reset(self, seed: int) -> Reset:
        jnp = self.core.jnp
        self._keys, self._state, obs, state, avail = self.core.reset(jnp.arange(self.num_envs, dtype=jnp.uint32) + seed)
        if not getattr(self, "_warm", False):  # compile the step now, not in the middle of a run
            E = self.num_envs  # the same argument types as step_async's, so this is its only compilation
            self.core.step(self._keys, self._state, np.zeros((E, self.spec.n_agents), np.int32),
                           np.full(E, -1, np.int32), np.ones(E, bool))
            self._warm = True
        self._last = Reset(np.array(obs), np.array(state), np.array(avail))  # copies: JAX's buffers are read-only
        return Reset(*(x.copy() for x in self._last))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None) -> VecStep:
        """All envs in one vmapped call; an inactive env keeps its state (its rows repeat its last result)."""
        self.step_async(actions, active, reseed)
        return self.step_wait()

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None,
                   reseed: np.ndarray | None = None) -> None:
        """Dispatch the jitted step and return at once (JAX computes it on its own threads)."""
        if self._state is None:
            raise DatasetError("reset the environment before stepping it")
        E = self.num_envs
        # numpy straight into the jitted step: converting with jnp.asarray first cost 10% of a step
        actions = np.asarray(actions, np.int32).reshape(E, self.spec.n_agents)
        reseed = np.full(E, -1, np.int32) if reseed is None else np.asarray(reseed, np.int32)
        on = np.ones(E, bool) if active is None else np.asarray(active, bool)
        out = self.core.step(self._keys, self._state, actions, reseed, on)
        self._keys, self._state = out[0], out[1]
        self._started = (on, out[2:])

    def step_wait(self) -> VecStep:
        on, (obs, state, avail, reward, terminated, truncated, won, final_obs, final_state, final_avail) = self._started
        self._started = None
        a = np.array  # copies: JAX's buffers are read-only
        obs, state, avail = a(obs), a(state), a(avail)
        if not on.all():
            for new, old in zip((obs, state, avail), self._last):
                new[~on] = old[~on]
        self._last = Reset(obs.copy(), state.copy(), avail.copy())
        return VecStep(obs, state, avail, a(reward), a(terminated), a(truncated), a(won),
                       a(final_obs), a(final_state), a(final_avail))


class SmaxEnv(MultiAgentEnv):
    """A single SMAX env: the vector env with E = 1."""

    def __init__(self, task: str):
        self.vec = SmaxVectorEnv(task, 1)
        self.spec = self.vec.spec
        self._next_seed = 0

    def reset(self, seed: int | None = None) -> Reset:
        if seed is None:  # continue the env's own RNG: derive from the running key
            seed = int(np.asarray(self.vec._keys[0][-1])) if self.vec._keys is not None else self._next_seed
        r = self.vec.reset(seed)
        return Reset(r.obs[0], r.state[0], r.avail[0])

    def step(self, actions: np.ndarray) -> Step:
        s = self.vec.step(np.asarray(actions)[None])
        done = bool(s.terminated[0] or s.truncated[0])
        # After an end the vector env has auto-reset; a single env reports the final observation.
        obs, state, avail = (s.final_obs[0], s.final_state[0], s.final_avail[0]) if done else \
            (s.obs[0], s.state[0], s.avail[0])
        return Step(obs, state, avail, float(s.reward[0]), bool(s.terminated[0]), bool(s.truncated[0]),
                    {"won": bool(s.won[0])})
