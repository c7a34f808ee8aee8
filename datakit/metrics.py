"""One metric vocabulary for every log omgmg writes, and the sinks that record it.

Behaviour training (``omgmg.collectors``) and offline training (``omgmg.trainer``) name what they
log from one table, :data:`METRICS`: ``NAMESPACE/NAME``, one namespace per kind of number.

- ``loss/``: a loss being minimised (``loss/q``, ``loss/v``, ``loss/actor``, ``loss/critic``, ...);
- ``value/``: a value estimate or a statistic of the update (``value/q_tot``, ``value/exp_z``, ...);
- ``policy/``: a property of the policy being trained (``policy/std``, ``policy/entropy``);
- ``eval/``: evaluation episodes in the environment (``eval/return``, ``eval/win_rate``, ...);
- ``charts/``: the episodes behaviour training itself generated (``charts/episode_return``);
- ``time/``: throughput (``time/steps_per_s``).

A record also carries its index: ``step`` (gradient steps, offline training) or ``env_steps``
(environment steps, behaviour training). :class:`MetricLog` writes each record to the run's
``log.jsonl``, the canonical record, and, when asked and ``tensorboard`` is installed
(``pip install "omgmg[tensorboard]"``), as scalars to TensorBoard event files in the run's
``tensorboard/`` folder. On resume, TensorBoard events past the resumed step are purged, as the
JSONL lines past the checkpoint are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from omgmg.datakit.errors import ConfigError
from omgmg.datakit.outputs import append_jsonl, truncate_jsonl

INDEX_KEYS = ("step", "env_steps")

METRICS = {
    # losses
    "loss/q": "TD loss of the per-agent Q networks through the mixer (Q_tot)",
    "loss/v": "loss of the local value networks V_i",
    "loss/actor": "policy loss (the mean over agents where each agent has its own)",
    r"loss/actor_\d+": "policy loss of agent i (HAPPO updates agents one after another)",
    "loss/critic": "value loss of the centralised critic V(s) (behaviour policies)",
    "loss/cql": "conservative penalty of MACQL / OMAR",
    "loss/behaviour": "loss of a generative model of the behaviour policy (MABCQ's VAE)",
    "loss/nu": "loss of ComaDICE's stationary-distribution-correction network",
    # values
    "value/q_tot": "mean Q_tot(s, a) over the batch",
    "value/q": "mean per-agent Q_i over the batch",
    "value/v": "mean per-agent V_i over the batch",
    "value/w": "mean mixing weight w_i(s)",
    "value/e": "mean of ComaDICE's e(s, a) (advantage-like Bellman residual)",
    "value/exp_z": "mean exp(z) weight of the implicit value regularisation",
    "value/target": "mean TD target",
    "value/ratio": "mean importance ratio (ComaDICE w*)",
    "value/advantage_std": "standard deviation of the advantages in the batch",
    "value/top_weight_share": "share of the batch's weight on its largest weight",
    "value/target_top_weight": (
        "gamma x the largest implicit weight in ICQ's critic target (above 1: Q_tot can run away)"
    ),
    "value/entropy_alpha": "entropy temperature (MACQL's learned alpha)",
    "value/cem_better": "share of states where OMAR's CEM search beat the policy's action",
    # diagnostics: one batch, every log_every steps (omgmg.diagnostics)
    "value/z_at_clip": "share of z = w (Qbar - V) / alpha at the clamp +-z_clip (its exp term has no gradient there)",
    "value/q_tot_batch": "mean Q_tot(s, a) over the diagnosed batch",
    "value/mc_return": "mean discounted Monte-Carlo return-to-go of the diagnosed batch's transitions in the data",
    "value/q_tot_over_mc": "value/q_tot_batch minus value/mc_return (above 0: Q_tot overestimates the data's returns)",
    "policy/grad_q_term": "gradient norm, over the actor's parameters, of the Q term of the actor loss (Eq. 10)",
    "policy/grad_bc_term": "gradient norm, over the actor's parameters, of the weighted log-likelihood term (Eq. 10)",
    "policy/actions_on_bounds": "share of the batch's continuous action entries lying on their bounds (+-1)",
    # the paper's mechanism (Definition 4.2): how far the policy's actions sit from the data (OMGMG: the target
    # policy pibar that Eq. 12 bootstraps from; OMIGA: its policy), on the diagnosed batch
    "policy/action_distance": "distance of a' ~ pi(o) from the data's action a at the same o, per entry in units of "
    "the action range (RMS over an agent's own entries, mean over agents and batch; 0: on the data's actions)",
    "policy/action_differs": "share of agents whose a' ~ pi(o) differs from the data's action (discrete actions)",
    "policy/behaviour_log_prob": "mean log pi_beta(a' | o) of the policy's actions under the behaviour policy that "
    "collected the data (where it is at hand: omgmg.behaviour)",
    "policy/behaviour_log_prob_data": "mean log pi_beta(a | o) of the data's own actions: the yardstick of "
    "policy/behaviour_log_prob",
    # policies
    "policy/std": "mean standard deviation of the Gaussian policies",
    "policy/entropy": "mean entropy of the policy",
    "policy/factor_mean": "mean HAPPO compound ratio M of the earlier agents' updates",
    # evaluation
    "eval/return": "mean episode return of the evaluation episodes",
    "eval/return_std": "standard deviation of the evaluation returns",
    "eval/win_rate": "share of evaluation episodes won (tasks that report wins; None elsewhere)",
    "eval/episode_length": "mean length of the evaluation episodes",
    "eval/episodes": "number of evaluation episodes",
    "eval/episode_returns": "every evaluation episode's return (a list; JSONL only)",
    "eval/episode_wins": "every evaluation episode's win, 0 or 1 (a list; JSONL only)",
    # training episodes
    "charts/episode_return": "mean return of the training episodes that ended in this iteration",
    "charts/win_rate": "share of those episodes won",
    # throughput
    "time/steps_per_s": "gradient steps (offline) or environment steps (behaviour) per second",
    "time/rollout_share": "behaviour training: the share of an iteration spent stepping the envs and acting (the rest: "
    "GAE and the PPO update, what a GPU could speed up)",
}

_PATTERNS = [re.compile(name + r"\Z") for name in METRICS]


def is_metric(name: str) -> bool:
    """Whether ``name`` is in the vocabulary (exactly, or by a pattern such as ``loss/actor_3``)."""
    return name in METRICS or any(p.match(name) for p in _PATTERNS)


def check_record(record: dict) -> None:
    """Refuse a record with a name outside the vocabulary (a programming error: add it to METRICS)."""
    unknown = sorted(k for k in record if k not in INDEX_KEYS and not is_metric(k))
    if unknown:
        raise ValueError(f"metric names outside omgmg.datakit.metrics.METRICS: {', '.join(unknown)}")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class MetricLog:
    """A run's log: every record to ``log.jsonl``; scalars also to TensorBoard when enabled.

    ``tensorboard``: True writes event files (a ConfigError if tensorboard is not installed), False
    does not, None writes them when tensorboard is installed. ``resume_at``: the step of the
    checkpoint a run resumes from (-1: a fresh start); later JSONL lines are dropped and later
    TensorBoard events purged.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        index: str,
        resume_at: int = -1,
        tensorboard: bool | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if index not in INDEX_KEYS:
            raise ValueError(f"index must be one of {INDEX_KEYS}, got {index!r}")
        self.path, self.index = Path(run_dir) / "log.jsonl", index
        truncate_jsonl(self.path, lambda r: r.get(index, 0) <= resume_at, warn=warn)
        if tensorboard and not tensorboard_available():
            raise ConfigError(
                "TensorBoard logging needs the tensorboard package: pip install 'omgmg[tensorboard]' "
                "(or turn it off with <<tensorboard=False>>)"
            )
        self._writer = None
        if tensorboard or (tensorboard is None and tensorboard_available()):
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(Path(run_dir) / "tensorboard"), purge_step=resume_at + 1 if resume_at >= 0 else None
            )

    @property
    def tensorboard_dir(self) -> Path | None:
        return None if self._writer is None else Path(self._writer.log_dir)

    def write(self, record: dict) -> None:
        check_record(record)
        append_jsonl(self.path, record)
        if self._writer is not None:
            step = int(record[self.index])
            for name, value in record.items():
                if name not in INDEX_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(name, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
