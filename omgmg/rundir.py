"""A training run's directory: what it is for, how it names its dataset, its checkpoints, resume and log.

A run directory holds ``config.json`` (the resolved config, the dataset and its identity hash),
``log.jsonl`` (one line per ``log_every`` steps and per evaluation: ``loss/*``, ``value/q_tot``,
``eval/return``, ``eval/win_rate``, ``time/steps_per_s``), ``checkpoints/latest.pt`` and ``best.pt``
(weights, normalisation, optimiser and RNG state, config; loadable with ``weights_only=True``),
``curves.png`` and ``results.json``. A run resumes only on the same data (the dataset's content
fingerprint, not just its task) with the same algorithm and hyperparameters (:func:`run_identity`,
:func:`check_resume`); checkpoints are atomic and checksummed, and a damaged ``latest.pt`` falls back to
``latest.previous.pt`` with a warning.

**The member axis.** A batched run trains M members (seeds, values of a loss hyperparameter) as one program,
and each member's directory gets exactly what a single run writes: :func:`member_checkpoint` slices member k
out of the stacked networks, optimisers and random streams, and :func:`load_members` stacks single runs'
checkpoints back (:func:`resume_states` puts every member at one step first).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from omgmg.algos import algorithm_class
from omgmg.algos.base import OfflineAlgorithm, OfflineConfig
from omgmg.datakit.checkpoints import load_checkpoint, previous_path
from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import CheckpointError, RequestError
from omgmg.datakit.format import identity_sha256
from omgmg.datakit.outputs import HOME_PREFIX, from_home_relative, home_relative, read_jsonl
from omgmg.datakit.remote import is_remote
from omgmg.members import member_slice, stack_states

RELATIVE_TO_RUN = "run directory"


def dataset_reference(location, run_dir: Path) -> dict:
    """How a run's ``config.json`` names its dataset, so that the run is not tied to this machine: a URL as
    it is; a folder inside ``$OMGMG_HOME`` as ``$OMGMG_HOME/...``; any other folder relative to the run
    directory (a project copied or moved whole, runs and data together, keeps working), marked so."""
    if is_remote(str(location)):
        return {"dataset": str(location)}
    named = home_relative(location)
    if named.startswith(HOME_PREFIX):
        return {"dataset": named}
    return {"dataset": os.path.relpath(os.path.abspath(location), run_dir), "dataset_relative_to": RELATIVE_TO_RUN}


def run_dataset(run_dir: Path, config: dict):
    """The dataset a run's ``config.json`` names (see :func:`dataset_reference`), on this machine: a URL
    (``RemoteLocation``) or a path; a RequestError saying to pass the dataset where none can be told."""
    from omgmg.datakit.remote import RemoteLocation

    text = config.get("dataset")
    if not isinstance(text, str):
        raise RequestError(f"{run_dir / 'config.json'} does not name the run's dataset; pass --dataset")
    if is_remote(text):
        return RemoteLocation(text)
    if config.get("dataset_relative_to") == RELATIVE_TO_RUN:
        return Path(os.path.normpath(Path(run_dir).absolute() / text))
    path = from_home_relative(text)
    if not path.is_absolute():  # omgmg 0.1.0 wrote it relative to the folder it ran in, which is not recorded
        raise RequestError(f"{run_dir / 'config.json'} names the dataset by the relative path {text}; pass --dataset")
    return path


def run_identity(algo_name: str, ds: Dataset, cfg: OfflineConfig) -> dict:
    """What a run directory is for: the algorithm, the data (task and content) and the hyperparameters
    (all but the step budget, which a resumed run may extend)."""
    return {
        "algorithm": algo_name,
        "dataset_identity": identity_sha256(ds.spec, ds.format_version),
        "dataset_content": ds.content_sha256(),
        "config": dataclasses.asdict(cfg) | {"steps": None},
    }


def check_resume(out: Path, state: dict, wanted: dict, ds: Dataset) -> None:
    """Refuse, in one line, to continue a run made for another algorithm, dataset or configuration."""
    held = {
        "algorithm": state["algorithm"],
        "dataset_identity": state["dataset_identity"],
        "dataset_content": state.get("dataset_content"),
        "config": state["config"] | {"steps": None},
    }
    if held == wanted:
        return
    if held["algorithm"] != wanted["algorithm"]:
        what = f"a {held['algorithm']} run, not {wanted['algorithm']}"
    elif held["dataset_identity"] != wanted["dataset_identity"]:
        what = "a run on a dataset of another task"
    elif held["dataset_content"] is None:
        what = "a run whose checkpoint does not record its data's content (written before omgmg checked it)"
    elif held["dataset_content"] != wanted["dataset_content"]:
        what = f"a run on other data than {ds.path} (same task, different content)"
    else:
        changed = sorted(k for k in wanted["config"] if held["config"].get(k) != wanted["config"][k])
        what = (
            "a run with other hyperparameters ("
            + ", ".join(f"{k}: {held['config'].get(k)!r} there vs {wanted['config'][k]!r} now" for k in changed)
            + ")"
        )
    raise RequestError(f"{out} holds {what}; choose another output path, or delete that run directory to start over")


def resume_states(outs: list[Path], warn) -> list[dict | None]:
    """Each member's checkpoint to resume from (None: it starts afresh), all at one step.

    Members save one after another at the same step, so an interruption in between leaves some a save
    ahead: those go back to their ``latest.previous.pt``, which holds the step the others are at. An
    interruption during the first round of saves (members with one checkpoint, all at one step, and no
    ``latest.previous.pt`` anywhere) leaves some members with a checkpoint and others none: then every member
    starts afresh, as it would have run uninterrupted."""
    states = []
    for o in outs:
        latest = o / "checkpoints" / "latest.pt"
        has = latest.exists() or (o / "checkpoints" / "latest.previous.pt").exists()
        states.append(load_checkpoint(latest, warn=warn) if has else None)
    started = [s for s in states if s is not None]
    if not started:
        return states
    if len(started) < len(states):
        fresh = [str(o) for o, s in zip(outs, states, strict=True) if s is None]
        first_save = int(started[0]["step"])
        first_round = all(int(s["step"]) == first_save for s in started) and not any(
            previous_path(o / "checkpoints" / "latest.pt").exists() for o in outs
        )
        if not first_round:
            raise RequestError(
                f"some members' run directories hold a run and others ({', '.join(fresh)}) do not: train the "
                "members that started together again, or the new ones as a batch of their own"
            )
        for o in outs:  # the interrupted first round is dropped: every member starts over from step 0
            for name in ("latest.pt", "best.pt"):
                (o / "checkpoints" / name).unlink(missing_ok=True)
        if warn:
            warn(
                f"the first checkpoints (step {first_save}) were being written when this batch stopped, for "
                f"{len(started)} of its {len(states)} members: every member starts over from step 0"
            )
        return [None] * len(states)
    step = min(int(s["step"]) for s in states)
    for i, (o, s) in enumerate(zip(outs, states, strict=True)):
        if int(s["step"]) != step:
            previous = previous_path(o / "checkpoints" / "latest.pt")
            older = load_checkpoint(previous, fallback=False) if previous.exists() else None
            if older is None or int(older["step"]) != step:
                raise RequestError(
                    f"{o} is at step {s['step']} and another member at step {step}, with no checkpoint of "
                    "that step to go back to: resume these members one at a time"
                )
            states[i] = older
    return states


def is_unstarted_run(path: Path) -> bool:
    """An empty folder, or one holding only the empty ``checkpoints/`` that earlier omgmg versions created before their
    ``config.json``: what a run killed while opening its dataset leaves behind, to be started again."""
    entries = list(path.iterdir())
    return not entries or (
        [e.name for e in entries] == ["checkpoints"] and entries[0].is_dir() and not any(entries[0].iterdir())
    )


def member_keys(algo: OfflineAlgorithm) -> set[str]:
    """The state-dict entries that carry the member axis: every parameter (targets included)."""
    return {name for name, _ in algo.named_parameters(remove_duplicate=False)}


def member_checkpoint(algo, loader, k: int, algo_name: str, config: dict, step: int, best, sums: dict, n: int) -> dict:
    """Member k's checkpoint, exactly what a single run with its config writes (member tensors (1, ...))."""
    return {
        "weights": member_slice(algo.state_dict(), member_keys(algo), k),
        "optim": {name: _optimizer_slice(o.state_dict(), k) for name, o in algo.optimizers.items()},
        "algorithm": algo_name,
        "config": dataclasses.asdict(algo.cfgs[k]),
        "env": algo.spec.to_json(),
        "dataset_identity": config["dataset_identity"],
        "dataset_content": config["dataset_content"],
        "step": step,
        "best": best,
        "loader": loader.state_dict(member=k),
        "torch_rng": algo.rng.generators[k].get_state(),
        "log_sums": {name: float(v[k]) for name, v in sums.items()},
        "log_n": n,
    }


def _optimizer_slice(state: dict, k: int) -> dict:
    """Member k's slice of an optimiser state over member-stacked parameters (Adam's moments are shaped as
    their parameters; its step count is shared)."""
    return {
        "state": {
            i: {key: v[k : k + 1].clone() if torch.is_tensor(v) and v.ndim > 0 else v for key, v in per_param.items()}
            for i, per_param in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def load_members(algo, loader, states: list[dict]) -> None:
    """Stack members' checkpoints (each a single run's) into ``algo``, ``loader`` and the random streams."""
    keys = member_keys(algo)
    for s in states:
        check_member_axis(algo, s["weights"])
    algo.load_state_dict(stack_states([s["weights"] for s in states], keys))
    for name, opt in algo.optimizers.items():
        parts = [s["optim"][name] for s in states]
        stacked = {
            "state": {
                i: {
                    key: torch.cat([p["state"][i][key] for p in parts]) if torch.is_tensor(v) and v.ndim > 0 else v
                    for key, v in per_param.items()
                }
                for i, per_param in parts[0]["state"].items()
            },
            "param_groups": parts[0]["param_groups"],
        }
        opt.load_state_dict(stacked)
    for k, s in enumerate(states):
        loader.load_state_dict(s["loader"], member=k)
    if algo.rng.device.type == "cpu":
        algo.rng.set_state([s["torch_rng"] for s in states])
    # a CUDA run resumes its random streams seeded afresh: a CPU generator's state does not carry over


def check_member_axis(algo, weights: dict) -> None:
    """Refuse, in one line, weights without the member axis: every per-member tensor of a checkpoint is
    (1, ...). Only omgmg development builds before the axis (never released) wrote others."""
    expected = algo.state_dict()
    for key in member_keys(algo):
        v, want = weights.get(key), expected[key]
        if v is not None and tuple(v.shape[1:]) != tuple(want.shape[1:]):
            raise CheckpointError(
                f"the checkpoint's {key} has shape {tuple(v.shape)}, where this omgmg expects (1, "
                f"{', '.join(map(str, want.shape[1:]))}): it was written by an omgmg development build from before "
                "the member axis (before any release); train the run again"
            )


def load_policy(path) -> OfflineAlgorithm:
    """Rebuild a trained algorithm from a checkpoint (``weights_only=True``: nothing is unpickled)."""
    return policy_from_checkpoint(load_checkpoint(path, fallback=False))


def policy_from_checkpoint(state: dict) -> OfflineAlgorithm:
    """The trained algorithm a loaded checkpoint holds, in eval mode."""
    from omgmg.datakit.spec import EnvSpec

    cls = algorithm_class(state["algorithm"])
    algo = cls(EnvSpec.from_json(state["env"]), cls.config_cls(**state["config"]))
    check_member_axis(algo, state["weights"])
    algo.load_state_dict(state["weights"])
    algo.eval()
    return algo


def eval_score(record: dict) -> float:
    return record["eval/win_rate"] if record.get("eval/win_rate") is not None else record["eval/return"]


def read_log(run_dir) -> list[dict]:
    """The run's log records (a torn last line, from a crash or a full disk, is left out)."""
    return read_jsonl(Path(run_dir) / "log.jsonl")


def plot_run(run_dir) -> Path:
    """curves.png: evaluation score and Q_tot against gradient steps, and where the run logged it, the
    mechanism (omgmg.diagnostics): how far the policy's actions sit from the data's, and how likely the
    behaviour policy finds them beside its own actions."""
    from matplotlib.figure import Figure

    log = read_log(run_dir)
    evals = [r for r in log if "eval/return" in r]
    qs = [r for r in log if "value/q_tot" in r]
    distance = next((k for k in ("policy/action_distance", "policy/action_differs") if any(k in r for r in log)), None)
    fig = Figure(figsize=(15 if distance else 10, 3.5), dpi=110)
    axes = fig.subplots(1, 3 if distance else 2)
    if evals:
        wins = evals[0].get("eval/win_rate") is not None
        axes[0].plot([r["step"] for r in evals], [eval_score(r) for r in evals], "o-")
        axes[0].set_ylabel("win rate" if wins else "return")
    axes[0].set_title("evaluation")
    if qs:
        axes[1].plot([r["step"] for r in qs], [r["value/q_tot"] for r in qs])
    axes[1].set_title("Q_tot on dataset batches")
    if distance:
        rows = [r for r in log if distance in r]
        ax = axes[2]
        label = "a' off the data (RMS / action range)" if distance.endswith("distance") else "share of a' != a"
        ax.plot([r["step"] for r in rows], [r[distance] for r in rows], color="tab:blue", label=label)
        ax.set_ylabel(label, color="tab:blue")
        ax.set_title("where the policy's actions sit")
        if any("policy/behaviour_log_prob" in r for r in rows):
            twin = ax.twinx()
            steps = [r["step"] for r in rows]
            twin.plot(steps, [r.get("policy/behaviour_log_prob") for r in rows], color="tab:red", label="log beta(a')")
            twin.plot(
                steps,
                [r.get("policy/behaviour_log_prob_data") for r in rows],
                "--",
                color="tab:red",
                label="log beta(a)",
            )
            twin.set_ylabel("behaviour log-probability", color="tab:red")
            twin.legend(fontsize=7, loc="lower right")
    last = max((r["step"] for r in log if "step" in r), default=0)
    for ax in axes:
        ax.set_xlabel("gradient steps")
        ax.set_xlim(0, 1.03 * max(last, 1))  # every panel over the whole run: one evaluation is a point, not an axis
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out)
    return out
