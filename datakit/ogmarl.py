"""Interop with OG-MARL's Vaults: the flashbax stores that hold the most widely used offline MARL datasets.

A vault, as OG-MARL's code writes and reads it (``og_marl/wrapped_environments/wrappers.py``
``ExperienceRecorder``, ``og_marl/replay_buffers.py`` ``populate_from_vault``, ``flashbax/vault/vault.py``):

- lives at ``{rel_dir}/{source}/{env_name}/{scenario}.vlt/{uid}``, e.g. ``vaults/og_marl/gymnasium_mamujoco/
  3hopper.vlt/Expert``; OG-MARL reads it with ``populate_from_vault(source, env_name, scenario, uid)``;
- holds ``metadata.json`` (flashbax's version, the shape and dtype of every leaf, any extra keys) and one
  array per leaf in a tensorstore OCDBT database, which only flashbax (tensorstore) reads;
- is one flat time stream: every leaf is ``(1, T, ...)``: ``observations`` (1, T, N, O), ``actions``
  (1, T, N, A) float or (1, T, N) int, ``rewards``, ``terminals``, ``truncations`` (1, T, N), and ``infos``
  with ``state`` (1, T, S) and, for discrete actions, ``legals`` (1, T, N, K);
- row t is one step: what the agents saw (o_t, s_t, legals_t), what they did (a_t) and what followed
  (r_t and the end flags). An episode ends on a row where every agent's terminal, or every agent's
  truncation, flag is set; the next row starts the next episode. OG-MARL's recorder keeps no final
  observation (the ``last-step`` row convention of :mod:`omgmg.datakit.rows`); its conversions of
  OMIGA's files keep OMIGA's extra final row (1001 rows per 1000-step episode: ``final-row``), which
  the importer detects as the OMIGA importer does.

**Import** (:func:`import_vault`) maps OG-MARL's names to omgmg's tasks (:func:`vault_task`:
``gymnasium_mamujoco/3hopper`` is ``mamujoco/Hopper-3x1``, ``smac_v2/terran_5_vs_5`` is
``smacv2/terran_5v5``), detects OMIGA's observation layout as the OMIGA importer does, takes each agent's
observation width from its zero padding (OG-MARL pads every agent to the widest), and records every
assumption in the dataset's ``collection`` metadata. A vault recorded on gymnasium-robotics (or in
OMIGA's layout) evaluates in the live environment; one recorded on the original MaMuJoCo (v2 on mujoco-py)
with local observations, or on StarCraft II without it installed, trains but does not evaluate here.

**Export** (:func:`export_vault`) writes the layout OG-MARL's recorder writes (``last-step`` rows, the team
reward given to every agent, terminations and truncations apart, legals from the action mask) so OG-MARL's
code trains on it unchanged. What the vault layout cannot hold (each episode's final observation and
state, wins, omgmg's task spec) is kept beside it: the spec in the vault's metadata under ``omgmg``, the
finals in ``omgmg-finals.npz`` in the vault's folder, which flashbax ignores and the importer reads back,
so a dataset exported and imported again is the same dataset.

flashbax (with JAX and tensorstore) is the optional extra ``omgmg[ogmarl]``; it is imported only here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import BackendUnavailable, DatasetError, RequestError
from omgmg.datakit.format import BEHAVIOUR_ARRAYS, LEVEL_NAMES, normalise_level
from omgmg.datakit.importing import Imported, check_action_bound, fetched, foreign_provenance, write_imported
from omgmg.datakit.loader import iter_episodes
from omgmg.datakit.omiga import is_omiga_observations, znorm
from omgmg.datakit.outputs import (
    OutputLock,
    check_replaceable,
    check_room,
    fsync_dir,
    make_parent,
    os_errors,
    read_lock,
    remove_output,
)
from omgmg.datakit.rows import ROW_CONVENTIONS, choose_rows, episode_bounds, team_values
from omgmg.datakit.spec import EPISODE_LIMITS, Box, Discrete, EnvSpec

METADATA = "metadata.json"  # flashbax's
FINALS = "omgmg-finals.npz"  # ours, beside flashbax's stores
LEAVES = ("observations", "actions", "rewards", "terminals", "truncations")
INSTALL = "pip install 'omgmg[ogmarl]'"

# OG-MARL's MaMuJoCo scenario names (og_marl/wrapped_environments/gymnasium_mamujoco.py, mamujoco_omiga.py)
MAMUJOCO_SCENARIOS = {
    "2halfcheetah": "HalfCheetah-2x3",
    "6halfcheetah": "HalfCheetah-6x1",
    "2ant": "Ant-2x4",
    "4ant": "Ant-4x2",
    "3hopper": "Hopper-3x1",
    "2walker": "Walker2d-2x3",
    "2humanoid": "Humanoid-9|8",
    "2reacher": "Reacher-2x1",
}
# OG-MARL's environment names -> (omgmg suite, the simulator that recorded the data)
ENVIRONMENTS = {
    "gymnasium_mamujoco": ("mamujoco", "gymnasium-robotics"),
    "mamujoco": ("mamujoco", "mujoco-py"),  # the original MaMuJoCo: v2 environments on mujoco-py
    "smac_v2": ("smacv2", "sc2"),
    "smax": ("smacv2", "smax"),
}


@dataclass(frozen=True)
class VaultTask:
    """One task under both names: OG-MARL's (env_name, scenario) and omgmg's (suite, task)."""

    env_name: str
    scenario: str
    suite: str
    task: str
    backend: str
    """The simulator the data came from."""


def vault_task(env_name: str, scenario: str) -> VaultTask:
    """omgmg's task for OG-MARL's ``env_name``/``scenario`` (one line naming the known ones otherwise)."""
    env_name, scenario = env_name.strip().lower(), scenario.strip()
    if env_name not in ENVIRONMENTS:
        raise RequestError(
            f"OG-MARL environment {env_name!r} has no omgmg task: omgmg imports {', '.join(ENVIRONMENTS)} "
            "(SMACv1, RWARE, MPE and Flatland are not omgmg tasks)"
        )
    suite, backend = ENVIRONMENTS[env_name]
    if suite == "mamujoco":
        if scenario.lower() not in MAMUJOCO_SCENARIOS:
            raise RequestError(
                f"unknown OG-MARL MaMuJoCo scenario {scenario!r}: known are {', '.join(MAMUJOCO_SCENARIOS)}"
            )
        return VaultTask(env_name, scenario.lower(), suite, MAMUJOCO_SCENARIOS[scenario.lower()], backend)
    m = re.fullmatch(r"(protoss|terran|zerg)_(\d+)_vs_(\d+)", scenario.lower())
    if not m or m[2] != m[3]:
        raise RequestError(
            f"unknown {env_name} scenario {scenario!r}: omgmg's SMACv2 tasks are RACE_N_vs_N with RACE protoss, "
            "terran or zerg (e.g. terran_5_vs_5); SMAX's race-less smacv2_5_units is not one"
        )
    return VaultTask(env_name, scenario.lower(), suite, f"{m[1]}_{m[2]}v{m[3]}", backend)


def vault_names(spec: EnvSpec) -> tuple[str, str, str]:
    """OG-MARL's (source, env_name, scenario) for a dataset's task: where :func:`export_vault` puts it so
    that OG-MARL's ``get_environment(source, env_name, scenario)`` builds the environment it came from.
    Data in OMIGA's observation layout go under OMIGA's names (OG-MARL evaluates them in OMIGA's env)."""
    if spec.suite == "mamujoco":
        by_task = {task.lower(): name for name, task in MAMUJOCO_SCENARIOS.items()}
        scenario = by_task.get(spec.task.lower(), spec.task.lower())
        if spec.options.get("obs_mode") == "omiga":
            return "omiga", "mamujoco", scenario
        return "omgmg", "gymnasium_mamujoco", scenario
    if spec.suite == "smacv2":
        race, _, sizes = spec.task.partition("_")
        n, _, m = sizes.partition("v")
        return "omgmg", "smax" if spec.backend == "smax" else "smac_v2", f"{race}_{n}_vs_{m}"
    return "omgmg", spec.suite, spec.task


def uid_for_level(level: str | None) -> str:
    """OG-MARL's uid style for a level: ``medium-expert`` -> ``Medium-Expert``."""
    return "-".join(w.capitalize() for w in (level or "dataset").split("-"))


def _flashbax():
    """flashbax's Vault and TrajectoryBufferState, or one line saying how to install them."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
            from flashbax.vault import Vault
    except ImportError as e:
        raise BackendUnavailable(
            f"OG-MARL vaults are read and written with flashbax, which is not installed ({e}): {INSTALL}"
        ) from None
    return Vault, TrajectoryBufferState


# ----- finding and reading a vault ---------------------------------------------------------------------------


def locate_vault(path, uid: str | None = None) -> Path:
    """The dataset folder of a vault: ``path`` itself when it holds flashbax's metadata.json, else the
    ``uid`` (or only) dataset inside a ``.vlt`` folder."""
    path = Path(path)
    if not path.exists():
        raise RequestError(f"no vault at {path}")
    if (path / METADATA).is_file():
        if uid is not None and uid != path.name:
            raise RequestError(f"{path} is the vault dataset {path.name!r}, not {uid!r}")
        return path
    if not path.is_dir():
        raise DatasetError(f"{path} is not an OG-MARL vault: a vault is a folder (NAME.vlt/UID with {METADATA})")
    uids = sorted(d.name for d in path.iterdir() if d.is_dir() and (d / METADATA).is_file())
    if uid is not None:
        if uid not in uids:
            raise RequestError(
                f"{path} has no dataset {uid!r}: "
                + (f"it holds {', '.join(uids)}" if uids else f"it holds no vault dataset (no */{METADATA})")
            )
        return path / uid
    if len(uids) == 1:
        return path / uids[0]
    if not uids:
        raise DatasetError(
            f"{path} is not an OG-MARL vault: no {METADATA} in it or in a folder inside it "
            "(a vault is NAME.vlt/UID/{manifest.ocdbt, metadata.json, d/})"
        )
    raise RequestError(f"{path} holds {len(uids)} datasets ({', '.join(uids)}): say which with <<uid=...>>")


def names_from_path(uid_dir: Path) -> tuple[str, str, str] | None:
    """(source, env_name, scenario) from ``{source}/{env_name}/{scenario}.vlt/{uid}``, if the path has that form."""
    vlt = uid_dir.resolve().parent
    if not vlt.name.endswith(".vlt"):
        return None
    return vlt.parent.parent.name, vlt.parent.name, vlt.name[: -len(".vlt")]


def read_metadata(uid_dir: Path) -> dict:
    """flashbax's metadata.json, checked for what an OG-MARL vault must have (one line otherwise)."""
    try:
        meta = json.loads((uid_dir / METADATA).read_text())
        shapes = meta["structure_shape"]
        version = float(meta["version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{uid_dir / METADATA} is damaged or not flashbax's ({type(e).__name__}: {e})") from None
    if int(version) != 1:
        raise DatasetError(f"{uid_dir} is a flashbax vault of version {version}; omgmg reads version 1.x")
    missing = [k for k in LEAVES if k not in shapes]
    if missing or not isinstance(shapes.get("infos", {}), dict):
        raise DatasetError(
            f"{uid_dir} is a flashbax vault but not in OG-MARL's layout: it lacks {', '.join(missing) or 'infos'} "
            f"(it holds {', '.join(sorted(shapes))}; expected {', '.join(LEAVES)} and infos)"
        )
    return meta


def read_experience(uid_dir: Path) -> dict[str, np.ndarray]:
    """Every leaf of a vault through flashbax, batch axis dropped: ``observations`` (T, N, O), ...,
    ``state`` and ``legals`` from ``infos`` where present."""
    Vault, _ = _flashbax()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints where the vault is
            vault = Vault(vault_name=uid_dir.parent.name, rel_dir=str(uid_dir.parent.parent), vault_uid=uid_dir.name)
            experience = vault.read().experience
    except (ValueError, RuntimeError, OSError, AssertionError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"flashbax could not read the vault {uid_dir}: it is damaged ({first})") from None
    out = {k: np.asarray(experience[k]) for k in LEAVES}
    infos = experience.get("infos") or {}
    for k in ("state", "legals"):
        if k in infos:
            out[k] = np.asarray(infos[k])
    for k, v in out.items():
        if v.ndim < 2 or v.shape[0] != 1:
            raise DatasetError(f"{uid_dir}: leaf {k!r} has shape {v.shape}; OG-MARL's leaves are (1, T, ...)")
    return {k: v[0] for k, v in out.items()}


def is_omgmg_vault(path) -> bool:
    """A vault dataset folder omgmg exported (its metadata.json says ``exported_by: omgmg``)."""
    try:
        return json.loads((Path(path) / METADATA).read_text()).get("exported_by") == "omgmg"
    except (OSError, ValueError, AttributeError):
        return False


# ----- import -----------------------------------------------------------------------------------------------


def _obs_widths(obs: np.ndarray) -> tuple[int, ...]:
    """Each agent's observation width from OG-MARL's zero padding: one past its last column that is ever
    non-zero (PadObsandActs pads every agent to the widest)."""
    used = (obs != 0).any(axis=0)  # (N, O)
    return tuple(int(np.flatnonzero(u)[-1]) + 1 if u.any() else obs.shape[2] for u in used)


def import_vault(
    src,
    out,
    *,
    uid: str | None = None,
    task: str | None = None,
    level: str | None = None,
    episode_limit: int | None = None,
    rows: str | None = None,
    action_bound: float | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    expected: dict | None = None,
) -> Dataset:
    """Convert one OG-MARL vault dataset to an omgmg dataset at ``out``; see the module docstring.

    ``src``: the vault dataset folder (``.../3hopper.vlt/Expert``) or its ``.vlt`` folder with ``uid``.
    ``task``: OG-MARL's ``env_name/scenario`` (default: read from the path); ``level``: default from the
    uid where it names one (``Expert``, ``Medium-Replay``); ``rows``: default detected;
    ``action_bound``: continuous actions' bound where the vault does not say (default 1).
    A vault omgmg exported says all of these itself (and is refused any of them but ``level``).
    """
    with fetched(src, out) as (path, origin):  # a URL fetched, a zipped vault unpacked aside
        uid_dir = locate_vault(path, uid)
        meta = read_metadata(uid_dir)
        if meta.get("exported_by") == "omgmg" and isinstance(meta.get("omgmg"), dict):
            given = {"task": task, "rows": rows, "action_bound": action_bound, "episode_limit": episode_limit}
            given = {k: v for k, v in given.items() if v is not None}
            if given:  # another value would be silently ignored
                raise RequestError(
                    f"{uid_dir} was exported by omgmg, which recorded its task, rows, action bounds and episode limit "
                    f"({EnvSpec.from_json(meta['omgmg']['spec']).name}); leave out "
                    + ", ".join(f"<<{k}=...>>" for k in given)
                )
            imported = read_our_vault(uid_dir, meta, level=level)
        else:
            imported = read_og_marl_vault(
                uid_dir, meta, task=task, level=level, episode_limit=episode_limit, rows=rows,
                action_bound=1.0 if action_bound is None else action_bound, expected=expected,
            )  # fmt: skip
        return write_imported(imported, out, overwrite=overwrite, progress=progress, origin=origin)


def read_og_marl_vault(
    uid_dir: Path, meta: dict, *, task: str | None, level: str | None, episode_limit: int | None, rows: str | None,
    action_bound: float, expected: dict | None = None,
) -> Imported:  # fmt: skip
    """A vault OG-MARL (or anyone but omgmg) wrote: the task from its path or ``task``, the layout, widths and
    row convention inferred from the data, every inference recorded. ``expected``: its publisher's statistics
    (:mod:`omgmg.datakit.registry`), checked on the vault's rows before anything else."""
    where = _task_of(uid_dir, task)
    level = normalise_level(level) if level else _level_from(meta, uid_dir.name, False)
    stream = _read_stream(uid_dir, where.suite, discrete=where.suite == "smacv2")
    obs, T, N, O = stream.obs, *stream.obs.shape
    options, notes, state = {}, {}, stream.state
    if expected:
        flags = check_published(uid_dir.name, stream.reward, stream.terminal, stream.truncation, expected)
        notes["publisher_statistics"] = {**expected, "matched_with_done_flags": flags}
    if where.suite == "mamujoco" and is_omiga_observations(obs[: min(T, 1000)].astype(np.float64)):
        options = {"obs_mode": "omiga"}
        state = znorm(obs[:, 0, : O - N].astype(np.float64)).astype(np.float32)
        notes["observation_layout"] = (
            "OMIGA's: o_i = znorm(concat(x, onehot(i))); the state is znorm(o_0[:S]) = znorm(x), as OMIGA's "
            "environment computes it"
            + (f" (the vault's infos/state {stream.state.shape[1:]} is not used)" if stream.state is not None else "")
        )
    state = _team_state(uid_dir, state, T, N, notes)
    limit = episode_limit or EPISODE_LIMITS[where.suite]
    done = stream.terminal | stream.truncation
    rows_how = "as asked" if rows else "detected from episodes that reach the limit"
    rows = choose_rows(rows, done, limit)
    if rows is None:  # no full episode: OMIGA's conversions keep final rows, OG-MARL's recorder does not
        source = (names_from_path(uid_dir) or ("",))[0]
        rows = "final-row" if source == "omiga" else "last-step"
        rows_how = f"from the vault's source {source!r}" if source else "OG-MARL's recorder's (the default)"
    bounds = episode_bounds(done, rows)
    if not bounds:
        raise DatasetError(f"{uid_dir} holds no complete episode")
    if "observation_layout" not in notes and _state_frozen(state, bounds):
        notes["warning"] = (
            "infos/state does not change within any episode although the observations do: the vault was "
            "probably recorded by OG-MARL's ExperienceRecorder, which keeps each episode's reset info for every "
            "step (it assigns self._info, not self._infos); values trained on this state see one state per episode"
        )
    if options.get("obs_mode") == "omiga":
        obs_dims = (O,) * N
    else:
        obs_dims = _obs_widths(obs)
        notes["obs_dims_rule"] = "each agent's width is one past its last ever non-zero column (zero padding)"
    if stream.discrete:
        action_spaces = (Discrete(int(stream.avail.shape[2])),) * N
    else:
        check_action_bound(uid_dir, stream.actions, action_bound)
        A = stream.actions.shape[2]
        action_spaces = (Box((-action_bound,) * A, (action_bound,) * A),) * N
    spec = EnvSpec(
        suite=where.suite,
        task=where.task,
        backend=where.backend,
        agent_ids=tuple(f"agent_{i}" for i in range(N)),
        obs_dims=obs_dims,
        state_dim=int(state.shape[1]),
        action_spaces=action_spaces,
        episode_limit=limit,
        reports_wins=False,
        options=options,
        backend_versions=_versions(),
    )
    collection = _collection(
        uid_dir, T, f"{rows} ({rows_how})", rows,
        f"an episode ends where every agent's terminal or truncation flag is set; it is a truncation where the "
        f"truncation flags are set or it is {limit} steps long, else a termination",
        notes,
    )  # fmt: skip
    collection["provenance"] = _foreign_provenance(spec, meta, collection)

    def episodes():
        for start, stop, final in bounds:
            truncated = stop - start >= limit or not done[final] or bool(stream.truncation[final])
            ends = {"final_obs": obs[final], "final_state": state[final], "terminated": not truncated}
            ends["final_avail"] = stream.avail[final] if stream.discrete else None
            yield stream.episode(start, stop, state, truncated=truncated, won=None, **ends), stop

    return Imported(spec, level, collection, uid_dir, T, episodes())


def read_our_vault(uid_dir: Path, meta: dict, *, level: str | None) -> Imported:
    """A vault omgmg exported: its spec, level and provenance from the metadata, each episode's final
    observation, state and win (and the behaviour arrays) from the finals file kept beside it."""
    spec = EnvSpec.from_json(meta["omgmg"]["spec"])
    level = normalise_level(level) if level else _level_from(meta, uid_dir.name, True)
    stream = _read_stream(uid_dir, spec.suite, discrete=spec.discrete)
    notes = {}
    state = _team_state(uid_dir, stream.state, *stream.obs.shape[:2], notes)
    bounds = episode_bounds(stream.terminal | stream.truncation, "last-step")
    if not bounds:
        raise DatasetError(f"{uid_dir} holds no complete episode")
    finals = _our_finals(uid_dir, meta, bounds, spec)
    collection = _collection(
        uid_dir, len(stream.obs), "last-step (omgmg's export)", "last-step",
        "as exported: omgmg's own terminations and truncations", notes,
    )  # fmt: skip
    collection["final_observations"] = f"kept by omgmg's export in {FINALS}"
    kept = meta["omgmg"].get("provenance")
    collection["provenance"] = (
        {**kept, "source": {"format": "OG-MARL vault exported by omgmg", "vault": collection["source_vault"]}}
        if isinstance(kept, dict)
        else _foreign_provenance(
            spec,
            meta,
            collection,
            also_unknown=("all of its provenance: the dataset omgmg exported it from recorded none",),
        )
    )
    # what the behaviour policy did, where omgmg's export kept it beside the vault (OG-MARL's vaults do not record it)
    behaviour = {n: finals[f"behaviour_{n}"] for n in BEHAVIOUR_ARRAYS if f"behaviour_{n}" in finals}

    def episodes():
        for e, (start, stop, _) in enumerate(bounds):
            yield stream.episode(
                start, stop, state,
                final_obs=finals["final_obs"][e],
                final_state=finals["final_state"][e],
                final_avail=finals["final_avail"][e] if spec.discrete else None,
                terminated=bool(stream.terminal[stop - 1]),
                truncated=bool(stream.truncation[stop - 1]),
                won=bool(finals["won"][e]) if spec.reports_wins else None,
                **{f"behaviour_{n}": arr[start:stop] for n, arr in behaviour.items()},
            ), stop  # fmt: skip

    return Imported(spec, level, collection, uid_dir, len(stream.obs), episodes(), tuple(behaviour))


@dataclass
class _Stream:
    """A vault's leaves as one team's stream of rows, checked: per-agent rewards and end flags made team values."""

    obs: np.ndarray  # (T, N, O)
    actions: np.ndarray  # (T, N) int or (T, N, A)
    reward: np.ndarray  # (T,)
    terminal: np.ndarray  # (T,) bool
    truncation: np.ndarray  # (T,) bool
    state: np.ndarray | None  # infos/state as stored: (T, S) or (T, N, S)
    avail: np.ndarray | None  # infos/legals > 0.5, (T, N, K), discrete actions only

    @property
    def discrete(self) -> bool:
        return self.avail is not None

    def episode(self, start: int, stop: int, state: np.ndarray, **ends) -> dict:
        """One episode's :meth:`DatasetWriter.add_episode` arguments: the rows start:stop and how it ended."""
        return dict(
            obs=self.obs[start:stop],
            state=state[start:stop],
            actions=self.actions[start:stop],
            reward=self.reward[start:stop],
            avail=self.avail[start:stop] if self.discrete else None,
            **ends,
        )


def _read_stream(uid_dir: Path, suite: str, *, discrete: bool) -> _Stream:
    exp = read_experience(uid_dir)
    obs, actions = exp["observations"], exp["actions"]
    if obs.ndim != 3:
        raise DatasetError(f"'observations' has shape (1, {', '.join(map(str, obs.shape))}); expected (1, T, N, O)")
    T, N, O = obs.shape
    for k in LEAVES[1:] + tuple(k for k in ("state", "legals") if k in exp):
        if exp[k].shape[0] != T:
            raise DatasetError(f"leaves disagree on the number of rows: observations {T}, {k} {exp[k].shape[0]}")
    if np.issubdtype(actions.dtype, np.integer) != discrete:
        raise DatasetError(
            f"'actions' are {actions.dtype} {actions.shape}, but {suite} tasks have "
            + ("discrete actions: (1, T, N) integers" if discrete else "continuous actions: (1, T, N, A)")
        )
    if actions.shape[:2] != (T, N) or actions.ndim != (2 if discrete else 3):
        raise DatasetError(f"'actions' has shape {actions.shape}; expected ({T}, {N}{'' if discrete else ', A'})")
    if discrete and ("legals" not in exp or exp["legals"].shape[:2] != (T, N) or exp["legals"].ndim != 3):
        raise DatasetError(f"{uid_dir}: a discrete-action vault needs infos/legals (1, T, N, K), the legal actions")
    return _Stream(
        obs=obs,
        actions=actions,
        reward=team_values("rewards", exp["rewards"], T, N),
        terminal=_every_agent("terminals", exp["terminals"], T, N),
        truncation=_every_agent("truncations", exp["truncations"], T, N),
        state=exp.get("state"),
        avail=exp["legals"] > 0.5 if discrete else None,
    )


def _every_agent(name: str, flags: np.ndarray, T: int, N: int) -> np.ndarray:
    """An end flag, per agent (T, N) or per step, as (T,): set where every agent's is (OG-MARL's ``.all(axis=-1)``)."""
    if flags.shape in ((T,), (T, 1)):
        return flags.reshape(T).astype(bool)
    if flags.shape != (T, N):
        raise DatasetError(f"{name!r} has shape {flags.shape}; OG-MARL's is (1, {T}, {N})")
    return flags.astype(bool).all(axis=1)


def _team_state(uid_dir: Path, state: np.ndarray | None, T: int, N: int, notes: dict) -> np.ndarray:
    """infos/state as (T, S): per-agent rows kept once when all agents agree, else concatenated (noted)."""
    if state is None:
        raise DatasetError(f"{uid_dir}: the vault has no infos/state; omgmg's datasets need the global state")
    if state.ndim == 3:
        if np.array_equal(state, np.broadcast_to(state[:, :1], state.shape)):
            state = state[:, 0]
        else:
            state, notes["state_layout"] = state.reshape(T, -1), "per-agent infos/state rows concatenated"
    if state.ndim != 2 or state.shape[0] != T:
        raise DatasetError(f"'infos/state' has shape {state.shape}; expected (1, {T}, S) or (1, {T}, {N}, S)")
    return state


def _task_of(uid_dir: Path, task: str | None) -> VaultTask:
    """The vault's task: ``task`` (OG-MARL's ENV_NAME/SCENARIO) where given, else from its path."""
    if task is None:
        names = names_from_path(uid_dir)
        if names is None:
            raise RequestError(
                f"{uid_dir} is not under {{source}}/{{env_name}}/{{scenario}}.vlt/, so its task is unknown: "
                "say which with <<task=ENV_NAME/SCENARIO>> (e.g. gymnasium_mamujoco/3hopper)"
            )
        return vault_task(*names[1:])
    env_name, _, scenario = task.partition("/")
    if not scenario:
        raise RequestError(
            f"name the vault's task as OG-MARL does, ENV_NAME/SCENARIO, e.g. gymnasium_mamujoco/3hopper (got {task!r})"
        )
    return vault_task(env_name, scenario)


def _collection(uid_dir: Path, T: int, rows_said: str, rows: str, termination_rule: str, notes: dict) -> dict:
    """The ``collection`` metadata of an imported vault: where it came from and each rule its rows were read by."""
    return {
        "source": "og-marl-vault",
        "source_vault": f"{uid_dir.parent.name}/{uid_dir.name}",  # the vault's name, not this machine's path
        "source_rows": int(T),
        "row_convention": f"{rows_said}: {ROW_CONVENTIONS[rows]}",
        "termination_rule": termination_rule,
        "trailing_rows_rule": "rows after the last end form a truncated episode, its last row as final observation",
        "stored_action": "as in the source vault",
        **notes,
    }


def _state_frozen(state: np.ndarray, bounds) -> bool:
    """Whether the state is constant within every episode of more than one step (and there is one)."""
    long = [(start, stop) for start, stop, _ in bounds if stop - start > 1]
    return bool(long) and all(
        np.array_equal(state[start:stop], state[start:stop][:1].repeat(stop - start, 0)) for start, stop in long
    )


def _foreign_provenance(spec: EnvSpec, meta: dict, collection: dict, also_unknown=()) -> dict:
    """What a vault can tell of where its data came from, and what it cannot."""
    source = {"format": "OG-MARL vault", "vault": collection["source_vault"], "flashbax_version": meta["version"]}
    return foreign_provenance(spec, ("flashbax", "tensorstore"), source, also_unknown=also_unknown)


def _level_from(meta: dict, uid: str, ours: bool) -> str:
    if ours and meta["omgmg"].get("level"):
        return normalise_level(meta["omgmg"]["level"])
    try:
        return normalise_level(uid)
    except RequestError:
        raise RequestError(
            f"the vault dataset {uid!r} is not named after an omgmg level: say which it is with <<level=...>> "
            f"({LEVEL_NAMES})"
        ) from None


def _our_finals(uid_dir: Path, meta: dict, bounds, spec: EnvSpec) -> dict[str, np.ndarray]:
    """The final observations omgmg's export kept beside the vault, checked against its episodes."""
    path = uid_dir / FINALS
    try:
        with np.load(path, allow_pickle=False) as f:
            finals = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{uid_dir} says omgmg exported it, but {FINALS} is missing or damaged ({e}): export it again"
        ) from None
    lengths = np.asarray([stop - start for start, stop, _ in bounds])
    kept = finals.get("lengths")
    need = (
        ["final_obs", "final_state"]
        + (["final_avail"] if spec.discrete else [])
        + (["won"] if spec.reports_wins else [])
    )
    per_step = [k for k in finals if k.startswith("behaviour_")]  # one row per step, not per episode
    if (
        kept is None
        or not np.array_equal(kept, lengths)
        or any(len(finals.get(k, ())) != len(lengths) for k in need)
        or any(len(finals[k]) != lengths.sum() for k in per_step)
    ):
        raise DatasetError(
            f"{uid_dir} says omgmg exported it, but {FINALS} does not match its {len(lengths)} episodes: "
            "the vault was changed after the export; export it again"
        )
    return finals


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("flashbax", "tensorstore"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# ----- export -----------------------------------------------------------------------------------------------


def default_vault_path(dataset: Dataset) -> Path:
    """Where OG-MARL's ``populate_from_vault(source, env_name, scenario, uid, rel_dir="vaults")`` looks,
    relative to the dataset's folder: ``vaults/{source}/{env_name}/{scenario}.vlt``."""
    source, env_name, scenario = vault_names(dataset.spec)
    return dataset.path.parent / "vaults" / source / env_name / f"{scenario}.vlt"


def export_vault(
    dataset,
    out,
    *,
    uid: str | None = None,
    overwrite: bool = False,
    block_rows: int = 65536,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a dataset as the vault dataset ``out/uid`` (``out``: a ``.vlt`` folder; ``uid`` default: the
    level, ``Medium-Expert``), aside first, then renamed into place. Returns the vault dataset's folder.

    ``overwrite`` replaces only a vault dataset omgmg exported; other datasets in ``out`` are left alone.
    """
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    Vault, BufferState = _flashbax()
    uid = uid or uid_for_level(ds.level)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", uid):
        raise RequestError(f"vault uid {uid!r} must be a plain folder name (letters, digits, '.', '_', '-')")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RequestError(f"{out} is a file; a vault is a folder (NAME.vlt)")
    target = out / uid
    if ds.n_episodes == 0:
        raise RequestError(f"{ds.path} holds no episode; there is nothing to export")
    spec = ds.spec
    N, O, S, T = spec.n_agents, spec.obs_dim, spec.state_dim, ds.n_transitions
    width = N * O + S + (N * (spec.n_actions + 1) if spec.discrete else N * spec.action_dim) + 3 * N
    need = T * 4 * width + (1 << 20)  # uncompressed float32 rows (gzip makes it smaller) + headroom
    made = not out.exists()  # the .vlt folder, made here (for the lock): removed again if the export fails
    make_parent(target)
    try:
        return _export_into(ds, out, target, uid, overwrite, need, block_rows, progress, Vault, BufferState)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _export_into(ds: Dataset, out: Path, target: Path, uid: str, overwrite: bool, need: int, block_rows, progress,
                 Vault, BufferState) -> Path:  # fmt: skip
    spec = ds.spec
    check_room(out, need, target)
    source, env_name, scenario = vault_names(spec)
    metadata = {
        "exported_by": "omgmg",
        "omgmg": {
            "spec": spec.to_json(),
            "level": ds.level,
            "row_convention": "last-step",
            "finals": FINALS,
            "source_dataset": ds.path.name,
            "provenance": ds.meta["collection"].get("provenance"),  # the same data: its provenance holds
        },
        "og_marl": {"source": source, "env_name": env_name, "scenario": scenario, "uid": uid},
    }
    aside = out.parent / f".{out.name}.{uid}.partial"  # outside the .vlt: OG-MARL lists every folder in it
    with OutputLock(target, "export"), read_lock(ds.path), os_errors(target, "exporting to"):
        if target.exists() or target.is_symlink():  # judged under the lock: not one another export is writing
            if not overwrite:
                raise RequestError(f"{target} already exists; choose another uid or path, or pass <<overwrite=True>>")
            check_replaceable(target, owned=is_omgmg_vault, what="a vault omgmg exported", sources=(ds.path,))
        try:
            remove_output(aside)  # left by a killed export (we hold the lock: nobody else writes it)
            _write_vault(ds, Vault, BufferState, aside, uid, metadata, block_rows, progress)
            old = aside / "replaced"
            if target.exists():
                os.replace(target, old)  # a vault is a folder: aside first, for a moment no dataset at target
            try:
                os.replace(aside / uid, target)
            except OSError:
                if old.exists():
                    os.replace(old, target)  # the export failed: the one it replaced goes back
                raise
            fsync_dir(out)
        finally:
            if aside.exists():
                shutil.rmtree(aside)
    return target


def _write_vault(ds: Dataset, Vault, BufferState, aside: Path, uid: str, metadata: dict, block_rows, progress) -> None:
    spec = ds.spec
    N, T = spec.n_agents, ds.n_transitions
    finals: dict[str, list] = {"final_obs": [], "final_state": [], "lengths": []}
    if spec.discrete:
        finals["final_avail"] = []
    if spec.reports_wins:
        finals["won"] = []
    for name in ds.behaviour_arrays:  # per step, in the vault's row order (OG-MARL's layout has no room for them)
        finals[f"behaviour_{name}"] = []
    vault, pending, written = None, [], 0

    def flush():
        nonlocal vault, pending, written
        block = {k: np.concatenate([p[k] for p in pending])[None] for k in LEAVES}
        infos = [k for k in ("state", "legals") if k in pending[0]]
        block["infos"] = {k: np.concatenate([p[k] for p in pending])[None] for k in infos}
        n = block["observations"].shape[1]
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints where the vault is
            if vault is None:
                vault = Vault(
                    vault_name=aside.name, experience_structure=block, rel_dir=str(aside.parent), vault_uid=uid,
                    metadata=metadata,
                )  # fmt: skip
            vault.write(BufferState(experience=block, current_index=np.int32(n), is_full=np.bool_(False)), (0, n))
        written += n
        pending = []
        if progress:
            progress(written, T)

    for ep in iter_episodes(ds, check=True):  # never write what validation rejects
        L = len(ep["reward"])
        ends = np.zeros((L, N), bool)
        rows = {
            "observations": ep["obs"].astype(np.float32),
            "actions": ep["actions"].astype(np.int32 if spec.discrete else np.float32),
            "rewards": np.repeat(ep["reward"].astype(np.float32)[:, None], N, axis=1),
            "terminals": ends.copy(),
            "truncations": ends.copy(),
            "state": ep["state"].astype(np.float32),
        }
        rows["terminals"][-1] = bool(ep["terminated"][-1])
        rows["truncations"][-1] = bool(ep["truncated"][-1])
        if spec.discrete:
            rows["legals"] = ep["avail"].astype(np.float32)
            finals["final_avail"].append(ep["final_avail"])
        if spec.reports_wins:
            finals["won"].append(bool(ep["won"]))
        finals["final_obs"].append(ep["final_obs"])
        finals["final_state"].append(ep["final_state"])
        finals["lengths"].append(L)
        for name in ds.behaviour_arrays:
            finals[f"behaviour_{name}"].append(ep[f"behaviour_{name}"])
        pending.append(rows)
        if sum(len(p["state"]) for p in pending) >= block_rows:
            flush()
    if pending:
        flush()
    with open(aside / uid / FINALS, "wb") as f:
        stacked = {k: np.concatenate(v) if k.startswith("behaviour_") else np.asarray(v) for k, v in finals.items()}
        np.savez(f, **stacked)
        f.flush()
        os.fsync(f.fileno())


# ----- the statistics OG-MARL's cards publish (og_marl/vault_utils/analyse_vault.py) -----------------------------

RETURN_RTOL = 1e-3
"""Relative tolerance of the return statistics (the publisher summed float32 rewards on an accelerator)."""


def publisher_statistics(reward: np.ndarray, terminal: np.ndarray, truncation: np.ndarray, flags: str) -> dict:
    """OG-MARL's ``analyse_vault`` statistics of a vault's stream: ``reward`` agent 0's per row (T,), the
    done flags per row (T,) (set where every agent's is); ``flags`` "terminals" or "terminals+truncations"."""
    done = terminal if flags == "terminals" else terminal | truncation
    ends = np.flatnonzero(done)
    sums = np.concatenate([[0.0], np.cumsum(reward.astype(np.float64))])
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = sums[ends + 1] - sums[starts]
    stats = {"transitions": int(len(reward)), "trajectories": int(len(ends))}
    if len(returns):
        stats.update(
            return_mean=float(returns.mean()),
            return_std=float(returns.std()),
            return_min=float(returns.min()),
            return_max=float(returns.max()),
        )
    return stats


def check_published(where, reward, terminal, truncation, expected: dict) -> str:
    """Which done flags reproduce the publisher's statistics; a DatasetError naming every difference if none."""
    tried = {}
    for flags in ("terminals", "terminals+truncations"):
        got = publisher_statistics(reward, terminal, truncation, flags)
        differ = [k for k, want in expected.items() if not _agrees(k, got.get(k), want)]
        if not differ:
            return flags
        tried[flags] = (got, differ)
    got, differ = min(tried.values(), key=lambda t: len(t[1]))
    said = ", ".join(f"{k} {_show(got.get(k))} (publisher: {_show(expected[k])})" for k in differ)
    raise DatasetError(
        f"{where} does not match what its publisher says: {said}; nothing was written (a truncated or altered copy, "
        "or another revision: fetch it again, or import it without the registry with `omgmg-data import og-marl`)"
    )


def _agrees(key: str, got, want) -> bool:
    if got is None:
        return False
    if key in ("transitions", "trajectories"):
        return int(got) == int(want)
    return abs(got - want) <= RETURN_RTOL * max(1.0, abs(want))


def _show(x) -> str:
    return "-" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))
