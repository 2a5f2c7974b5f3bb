"""Bit-depth reduction (feature squeezing, Xu et al., NDSS 2018) in front of the victim.

An input-transformation defense: nothing is trained; every input, clean or adversarial,
is quantised to `bits` bits per colour channel before the public encoder sees it, which
removes perturbations smaller than half a quantisation step (a 5-bit squeeze erases any
change below 1/62 of the range, about 4/255). It is the worked example of a defended
model that is not a bare encoder: `InputTransformed(BitDepth(bits), victim)`, stored by
its spec and the victim's weights. Xu et al. use it as a detector too (comparing the
squeezed and plain predictions); this plugin is the squeezing alone.
"""

from __future__ import annotations

from pydantic import Field

from daebench.data import ImageData
from daebench.defenses.base import DefendedModel, Defense, register_defense
from daebench.encoders.backbones import Encoder
from daebench.encoders.models import BitDepth, InputTransformed
from daebench.plugins import Params


class BitDepthParams(Params):
    bits: int = Field(5, ge=1, le=8, description="bits per colour channel (Xu et al.'s CIFAR-10 choice: 5)")


@register_defense("bit_depth")
class BitDepthReduction(Defense):
    """Colour-depth reduction of every input before the public encoder (feature squeezing)."""

    Params = BitDepthParams
    profile_free = True  # nothing is trained: no profile changes its cost

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        return DefendedModel([InputTransformed(BitDepth(self.params.bits), victim.eval())])
