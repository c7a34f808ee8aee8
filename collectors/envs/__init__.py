"""Environments behind one interface (``omgmg.collectors.envs.base``): the rest of omgmg never sees which
simulator is underneath.

    env = make_env("mamujoco/Hopper-3x1")                     # one env
    vec = make_vector_env("smacv2/protoss_5v5", num_envs=64)  # SMAX (or SC2) with auto-reset
    vec = make_vector_env("mamujoco/HalfCheetah-6x1", 8, workers=2)

Task names are ``SUITE/TASK`` (or suite and task apart), case-insensitive. Suites:

- ``mamujoco``: any ``Scenario-agent_conf`` gymnasium-robotics supports (``omgmg.collectors.envs.mamujoco``);
  option ``obs_mode="omiga"`` for OMIGA-style observations.
- ``smacv2``: ``{protoss,terran,zerg}_{5,10,20}v{n}`` on ``backend="sc2"`` (StarCraft II) or
  ``"smax"`` (JaxMARL); the default is sc2 where installed, else smax (``omgmg.collectors.envs.smacv2``);
  SMAX option ``reward_scale="smacv2"`` (default: a won battle returns 20) or ``"smax"``.
- ``fixture``: the synthetic fixture systems (``omgmg.collectors.fixtures``), for tests
  (``omgmg.collectors.envs.fixture``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from omgmg.collectors.envs.base import MultiAgentEnv, Reset, Step, VecStep, VectorEnv
from omgmg.datakit.errors import BackendUnavailable, DatasetError, RequestError
from omgmg.datakit.spec import EnvSpec

SUITES = ("mamujoco", "smacv2", "fixture")
EXAMPLES = {
    "mamujoco": ("HalfCheetah-6x1", "Hopper-3x1", "Ant-2x4", "Walker2d-2x3"),
    "smacv2": ("protoss_5v5", "terran_5v5", "zerg_5v5", "protoss_10v10"),
    "fixture": ("continuous", "discrete", "halfcheetah-6x1", "protoss-5v5"),
}

__all__ = [
    "EXAMPLES",
    "MultiAgentEnv",
    "Reset",
    "SUITES",
    "Step",
    "TaskRef",
    "VecStep",
    "VectorEnv",
    "check_compatible",
    "construction",
    "make_env",
    "make_vector_env",
    "resolve",
    "task_for_dataset",
]


@dataclass(frozen=True)
class TaskRef:
    """A fully resolved task: canonical names, the backend that will run it, and its options."""

    suite: str
    task: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """One line for the user about how the backend was chosen (empty when there was no choice)."""

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.task}"


def _split(name: str, task: str | None) -> tuple[str, str]:
    if task is None:
        if "/" not in name:
            raise RequestError(
                f"name a task as SUITE/TASK, e.g. mamujoco/Hopper-3x1 (got {name!r}); suites: " + ", ".join(SUITES)
            )
        name, task = name.split("/", 1)
    suite = name.strip().lower()
    if suite not in SUITES:
        listing = "; ".join(f"{s}: {', '.join(EXAMPLES[s])}" for s in SUITES)
        raise RequestError(f"unknown suite {name!r}; valid suites and example tasks: {listing}")
    return suite, task.strip()


def resolve(name: str, task: str | None = None, *, backend: str | None = None, **options) -> TaskRef:
    """Check a task name and pick its backend; raises DatasetError naming the valid choices."""
    suite, task = _split(name, task)
    if suite == "mamujoco":
        from omgmg.collectors.envs import mamujoco

        if backend not in (None, "gymnasium-robotics"):
            raise RequestError(f"MaMuJoCo has one backend, gymnasium-robotics (got {backend!r})")
        scenario, conf = mamujoco.parse_task(task)
        unknown = set(options) - {"obs_mode"}
        if unknown:
            raise RequestError(f"unknown MaMuJoCo option(s) {sorted(unknown)}; known: obs_mode")
        return TaskRef(suite, f"{scenario}-{conf}", "gymnasium-robotics", dict(options))
    if suite == "smacv2":
        from omgmg.collectors.envs import smacv2

        canonical = smacv2.canonical_task(task)
        unknown = set(options) - {"reward_scale"}
        if unknown:
            raise RequestError(
                f"SMACv2 tasks take no option {', '.join(sorted(unknown))} (obs_mode is MaMuJoCo's); their one "
                "option is reward_scale, for SMAX"
            )
        chosen, note = smacv2.choose_backend(backend)
        if chosen == "sc2" and options.get("reward_scale", "smacv2") != "smacv2":
            raise RequestError("StarCraft II's rewards are on SMACv2's own scale; reward_scale is an SMAX option")
        if chosen == "smax":
            from omgmg.collectors.envs.smax import DEFAULT_REWARD_SCALE, reward_factor

            reward_factor(options.get("reward_scale", DEFAULT_REWARD_SCALE))  # an unknown scale is refused here
            options = {"reward_scale": options.get("reward_scale", DEFAULT_REWARD_SCALE)}
        return TaskRef(suite, canonical, chosen, dict(options) if chosen == "smax" else {}, note)
    from omgmg.collectors.fixtures import SHAPES

    if task.lower() not in SHAPES:
        raise RequestError(f"unknown fixture task {task!r}: choose one of {', '.join(SHAPES)}")
    if backend not in (None, "numpy"):
        raise RequestError(f"fixture tasks have one backend, numpy (got {backend!r})")
    return TaskRef(suite, task.lower(), "numpy", {})


def _factory(ref: TaskRef, seed: int = 0):
    """A picklable zero-argument constructor of one env (for worker processes)."""
    if ref.suite == "mamujoco":
        from omgmg.collectors.envs.mamujoco import MaMuJoCoEnv

        return functools.partial(MaMuJoCoEnv, ref.task, **ref.options)
    if ref.suite == "smacv2":
        if ref.backend == "sc2":
            from omgmg.collectors.envs.smacv2 import SC2Env

            return functools.partial(SC2Env, ref.task, seed)
        from omgmg.collectors.envs.smax import SmaxEnv

        return functools.partial(SmaxEnv, ref.task, **ref.options)
    from omgmg.collectors.envs.fixture import FixtureEnv

    return functools.partial(FixtureEnv, ref.task)


def make_env(name: str | TaskRef, task: str | None = None, *, backend: str | None = None, **options) -> MultiAgentEnv:
    """One environment for a task name (see the module docstring) or a resolved TaskRef."""
    ref = name if isinstance(name, TaskRef) else resolve(name, task, backend=backend, **options)
    return _factory(ref)()


def worthwhile_workers(ref: TaskRef, requested: int) -> int:
    """The worker processes worth starting to step a task's envs: ``requested``, but none for the fixture
    suite, whose envs step in microseconds (a spawned worker's start-up, about a second, is never won back;
    measured: a fixture ``collect`` took 2.4 s less). Results do not depend on it."""
    return 1 if ref.suite == "fixture" else requested


def make_vector_env(
    name: str | TaskRef,
    num_envs: int,
    task: str | None = None,
    *,
    backend: str | None = None,
    workers: int = 1,
    parts: int = 1,
    **options,
) -> VectorEnv:
    """``num_envs`` environments stepped together with auto-reset.

    SMAX steps its envs in one jitted vmap, or in ``parts`` batches dispatched separately (while JAX
    computes one, the caller works on another: ``VectorEnv.groups()``); CPU simulators run in this
    process (``workers=1``) or split over ``workers`` processes.
    """
    if num_envs < 1:
        raise RequestError(f"num_envs must be >= 1, got {num_envs}")
    ref = name if isinstance(name, TaskRef) else resolve(name, task, backend=backend, **options)
    if ref.suite == "smacv2" and ref.backend == "smax":
        from omgmg.collectors.envs.smax import SmaxVectorEnv

        return SmaxVectorEnv(ref.task, num_envs, parts, **ref.options)
    from omgmg.collectors.envs.vector import SerialVectorEnv, SubprocVectorEnv

    if workers > 1:
        return SubprocVectorEnv(_factory(ref), num_envs, workers)
    return SerialVectorEnv(_factory(ref), num_envs)


def construction(ref: TaskRef) -> dict:
    """How the environment of a resolved task is built: constructor and arguments (for provenance)."""
    if ref.suite == "mamujoco":
        from omgmg.collectors.envs import mamujoco

        return mamujoco.construction(ref.task, **ref.options)
    if ref.suite == "smacv2":
        if ref.backend == "sc2":
            from omgmg.collectors.envs import smacv2

            return smacv2.construction(ref.task)
        from omgmg.collectors.envs import smax

        return smax.construction(ref.task, **ref.options)
    return {"constructor": "omgmg.collectors.envs.fixture.FixtureEnv", "arguments": {"task": ref.task}}


def task_for_dataset(spec: EnvSpec) -> TaskRef:
    """The task (and backend) on which a policy trained on a dataset with this spec is evaluated.

    Data imported from OMIGA's HDF5 files (backend ``omiga-hdf5``) is evaluated on gymnasium-robotics
    with ``obs_mode="omiga"``, and so is data recorded on the original MaMuJoCo (``mujoco-py``, from OG-MARL's
    vaults) in OMIGA's observation layout, which gymnasium-robotics reproduces; the original MaMuJoCo's
    local observations it does not, so such data is refused. Everything else is evaluated on the backend
    that produced it.
    """
    if spec.backend == "mujoco-py" and spec.options.get("obs_mode") != "omiga":
        raise BackendUnavailable(
            f"this {spec.name} data was recorded on the original MaMuJoCo (v2 environments on mujoco-py) with its "
            "local observations, which gymnasium-robotics' v5 environments do not reproduce, so a policy trained "
            "on it cannot be evaluated here: train with <<evaluate=False>>"
        )
    backend = None if spec.backend in ("omiga-hdf5", "gymnasium-robotics", "mujoco-py", "numpy") else spec.backend
    if spec.suite == "mamujoco":
        return resolve(spec.suite, spec.task, backend=backend, **spec.options)
    if spec.suite == "smacv2" and spec.backend == "smax":  # evaluated on the dataset's reward scale
        return resolve(spec.suite, spec.task, backend=backend, reward_scale=spec.options.get("reward_scale", "smax"))
    return resolve(spec.suite, spec.task, backend=backend)


def check_compatible(dataset: EnvSpec, env: EnvSpec) -> None:
    """Raise a clear error when a policy trained on ``dataset`` cannot act in ``env``."""
    problems = []
    if (dataset.suite, dataset.task.lower()) != (env.suite, env.task.lower()):
        problems.append(f"task {dataset.name} vs {env.name}")
    for what in ("n_agents", "obs_dims", "state_dim", "action_spaces"):
        a, b = getattr(dataset, what), getattr(env, what)
        if a != b:
            problems.append(f"{what} {a} vs {b}")
    if dataset.options.get("obs_mode") != env.options.get("obs_mode"):
        problems.append(f"obs_mode {dataset.options.get('obs_mode')} vs {env.options.get('obs_mode')}")
    if problems:
        raise DatasetError(
            f"the dataset ({dataset.name}, backend {dataset.backend}) does not fit the environment "
            f"({env.name}, backend {env.backend}): " + "; ".join(problems)
        )
