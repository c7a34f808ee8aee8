"""BC: behaviour cloning, maximum likelihood of the dataset's actions, per agent.

The baseline every offline method should beat: it learns the average behaviour policy of the
dataset, with the same actor networks (tanh-Gaussian or masked softmax) as the other algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omgmg.algos.base import OfflineAlgorithm, OfflineConfig
from omgmg.datakit.loader import Batch
from omgmg.datakit.spec import EnvSpec
from omgmg.members import member_mean
from omgmg.nets import adam


@dataclass
class BCConfig(OfflineConfig):
    """BC has no hyperparameters beyond the shared ones (documented on OfflineConfig)."""


def bc_loss(log_prob_data: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the dataset actions, -E_D[log pi_i(a_i | o_i)], each member's (M,)."""
    return -member_mean(log_prob_data)


class BC(OfflineAlgorithm):
    name = "bc"
    config_cls = BCConfig

    def __init__(self, spec: EnvSpec, cfg: BCConfig | list[BCConfig]):
        super().__init__(spec, cfg)
        self.actor = self.stochastic_actor()
        self.optimizers = {"actor": adam(self.actor.parameters(), self.cfg.lr)}

    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        loss = bc_loss(self.log_prob_data(b))
        self.optimize("actor", loss, self.actor)
        return {"loss/actor": loss.detach()}

    def diagnostics(self, b: Batch, mc_return: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Adds where the policy's actions sit against the data's (:meth:`generalisation`): the yardstick for
        OMGMG's and OMIGA's, since a policy that reproduces the data sits this far from it (docs/omgmg.md)."""
        return super().diagnostics(b, mc_return) | self.generalisation(b, self.actor)
