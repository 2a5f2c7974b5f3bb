"""The one training toolkit shared by attacks, defenses and SSL recipes.

* `pgd`: sign-gradient ascent in an L-inf ball around [0, 1] images, the PGD every
  adversarial training loop and per-sample attack uses. It returns what callers need:
  the adversarial images and, when asked to reproduce the released Gen-AF / ZePAD loops'
  leak, the objective it leaked into the parameters' gradients.
* `EpochCheckpoint` and `rng_state` / `restore_rng`: epoch-level resume that makes a
  killed run, resumed, equal an uninterrupted one bit for bit.
* `warmup_cosine_lr`: the linear warm-up + cosine schedule of solo-learn and DeACL.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class PGDResult:
    """The adversarial images (detached, in [0, 1]) and the summed objective that was
    back-propagated into `leak_into`'s gradients (zero when nothing leaked)."""

    x_adv: torch.Tensor
    leaked_objective: torch.Tensor


def pgd(
    objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, step_size: float, steps: int,
    random_start: bool = False, start: torch.Tensor | None = None, clamp_start: bool = True,
    iterates: list[torch.Tensor] | None = None, leak_into: list[torch.Tensor] | None = None,
) -> PGDResult:
    """Maximise `objective(x_adv)` (a scalar) in the L-inf ball of radius eps around x.

    The start is x (+ uniform noise in the ball, from torch's global generator, when
    `random_start`), or `start` when given (TRADES and MART start from x + 0.001 N(0, 1)),
    clamped to [0, 1] unless `clamp_start` is off (the TRADES, MART and DeACL references
    take their first gradient at the unclamped start). Each step moves by step_size along
    the gradient's sign and projects onto the ball, then onto [0, 1]. `iterates`, if
    given, receives each point a gradient was taken at (the start first).

    `leak_into` reproduces, on request, the released Gen-AF / ZePAD loops' attack
    (`loss.backward()` inside the PGD after the optimisers were zeroed): each step's
    objective is also back-propagated into these parameters' `.grad`, in the same backward
    pass as the input gradient, and their sum is returned; otherwise no gradient reaches
    a parameter (the input gradient is taken with `torch.autograd.grad`)."""
    if start is not None:
        x_adv = start.detach()
    else:
        x_adv = x.detach() + (torch.empty_like(x).uniform_(-eps, eps) if random_start else 0)
    if clamp_start:
        x_adv = x_adv.clamp(0, 1)
    leak_into = [t for t in (leak_into or []) if t.requires_grad]
    leaked = torch.zeros((), device=x.device)  # on the device: no host sync per step
    for _ in range(steps):
        if iterates is not None:
            iterates.append(x_adv.detach())
        x_adv.requires_grad_(True)
        value = objective(x_adv)
        grad, *leaked_grads = torch.autograd.grad(value, [x_adv, *leak_into], allow_unused=True)
        for param, g in zip(leak_into, leaked_grads):
            if g is not None:
                param.grad = g if param.grad is None else param.grad + g
        if leak_into:
            leaked = leaked + value.detach().float()
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return PGDResult(x_adv.detach().clamp(0, 1), leaked)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random states a training loop draws from: its batch generator's, torch's global
    one (PGD random starts, dropout) and CUDA's."""
    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])


class EpochCheckpoint:
    """Epoch-level resume for long stages, so a killed stage picks up where it was.

    Holds state dicts, the epoch, histories and the RNG states (`rng_state`), so a resumed
    run equals an uninterrupted one bit for bit. Written atomically (temp + rename); read
    with `weights_only=True` (tensors and plain values only). The runner deletes it once
    the stage's artifact is in the store. No path: a no-op."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start over rather than fail
            return None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def warmup_cosine_lr(step: int, warmup: int, total: int, base: float, start: float, min_lr: float = 0.0) -> float:
    """The closed form of LinearWarmupCosineAnnealingLR (pl_bolts; solo-learn's copy, DeACL's
    scheduler): linear from `start` at step 0 to `base` at step warmup - 1, then cosine from
    `base` at step `warmup` to `min_lr` at step `total`. Without warm-up the cosine starts at `base`."""
    if step < warmup:
        return start + step * (base - start) / max(1, warmup - 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
