"""The behaviour-policy algorithms by name, and loading a trained one from its checkpoint.

MAPPO trains the behaviour policies of discrete-action tasks (SMACv2), HAPPO those of
continuous-action tasks (MaMuJoCo).
"""

from __future__ import annotations

from pathlib import Path

from omgmg.collectors.happo import HAPPOAgent, HAPPOConfig
from omgmg.collectors.mappo import MAPPOAgent, MAPPOConfig
from omgmg.datakit.checkpoints import load_checkpoint
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.spec import EnvSpec

ALGORITHMS = {"mappo": (MAPPOConfig, MAPPOAgent), "happo": (HAPPOConfig, HAPPOAgent)}
"""name -> (config class, agent class)."""


def algorithm(name: str) -> tuple[type, type]:
    """(config class, agent class) of a behaviour-policy algorithm."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown behaviour algorithm {name!r}: mappo (discrete) or happo (continuous)")
    return ALGORITHMS[name]


def algorithm_for(spec: EnvSpec) -> str:
    """The behaviour algorithm a task's action kind calls for."""
    return "mappo" if spec.discrete else "happo"


def load_agent(path: Path):
    """Rebuild a behaviour agent from a checkpoint (weights_only: no code is unpickled)."""
    state = load_checkpoint(path, fallback=False)
    cfg_cls, agent_cls = algorithm(state["algorithm"])
    cfg = cfg_cls(**(getattr(cfg_cls, "LEGACY", {}) | state["config"]))  # fields older runs lack
    agent = agent_cls(EnvSpec.from_json(state["env"]), cfg)
    agent.load_state_dict(state["weights"])
    agent.eval()
    return agent, state
