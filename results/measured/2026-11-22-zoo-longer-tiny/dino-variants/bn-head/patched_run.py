"""Throwaway experiment: DINO tiny with batch norm in the projection head (solo-learn's
use_bn_in_head), patched in; its own cache dir, since the artifact key does not record it."""
import sys
import benchmark.encoders.ssl.dino as dino_mod
from lightly.models.modules import DINOProjectionHead

class BNHead(DINOProjectionHead):
    def __init__(self, *args, **kwargs):
        kwargs["batch_norm"] = True
        super().__init__(*args, **kwargs)

dino_mod.DINOProjectionHead = BNHead
from benchmark.cli import main
sys.exit(main())
