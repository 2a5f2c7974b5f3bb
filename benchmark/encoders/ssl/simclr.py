"""SimCLR (Chen et al., ICML 2020): NT-Xent between two views' projections.

solo-learn CIFAR config: projector 2048-256, temperature 0.2, LARS lr 0.4,
wd 1e-5, batch 256, 1000 epochs, 10 warm-up epochs.
"""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from pydantic import Field

from benchmark.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny



class SimCLRParams(SSLParams):
    temperature: float = Field(0.2, gt=0)


@register_ssl_method("simclr")
class SimCLR(SSLMethod):
    Params = SimCLRParams
    profiles = {"tiny": tiny()}

    def __init__(self, encoder, params: SimCLRParams) -> None:
        super().__init__(encoder, params)
        self.projector = SimCLRProjectionHead(encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim)
        self.criterion = NTXentLoss(temperature=params.temperature)

    def training_loss(self, view1, view2):
        return self.criterion(self.projector(self.encoder(view1)), self.projector(self.encoder(view2)))
