"""Defenses: one plugin per file, registered in `DEFENSES` (see defenses/base.py)."""

from daebench.defenses.base import DEFENSES, AdversarialFineTuning, DefendedModel, Defense, register_defense

__all__ = ["DEFENSES", "AdversarialFineTuning", "DefendedModel", "Defense", "register_defense"]
