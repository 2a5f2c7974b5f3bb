"""No defense: the public encoder as released (the paper's "baseline")."""

from __future__ import annotations

from daebench.data import ImageData
from daebench.encoders.backbones import Encoder
from daebench.defenses.base import DefendedModel, Defense, register_defense


@register_defense("none")
class NoDefense(Defense):
    """The victim encoder, unchanged; downstream heads are trained on its features."""

    profile_free = True

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        return DefendedModel([victim.eval()])
