"""Attacks: one plugin per file, registered in `ATTACKS` (see attacks/base.py)."""

from daebench.attacks.base import ATTACKS, Attack, AttackParams, register_attack

__all__ = ["ATTACKS", "Attack", "AttackParams", "register_attack"]
