"""SimCLR (Chen et al., ICML 2020): NT-Xent between two views' projections.

Why lightly's `NTXentLoss`: for two views it is solo-learn's `simclr_loss_func` (tested
in tests/fidelity); the projector is solo-learn's BN-free one. Recipe and deviations:
docs/FIDELITY.md#ssl-simclr.
"""

from __future__ import annotations

from lightly.loss import NTXentLoss
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, symmetric
from daebench.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import mlp


class SimCLRParams(SSLParams):
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.2, gt=0)
    augment: AugmentParams = Field(default_factory=symmetric)


@register_ssl_method("simclr")
class SimCLR(SSLMethod):
    Params = SimCLRParams
    version = 2  # 2: BN-free projector, symmetric.yaml views, wd 1e-4, solo-learn's LARS / schedule
    profiles = {"tiny": tiny()}

    def __init__(self, encoder, params: SimCLRParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)
        self.criterion = NTXentLoss(temperature=params.temperature)

    def training_loss(self, view1, view2):
        return self.criterion(self.projector(self.encoder(view1)), self.projector(self.encoder(view2)))
