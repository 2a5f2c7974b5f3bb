"""DeACL stage 2 (Zhang et al., ECCV 2022): distil the public encoder into an
adversarially robust student, without labels.

Why this shape: the defense must need only the images of D_f, and the released
`mocov2_distillation_AT.py` training step is the reference; every step and its
named options are listed in docs/FIDELITY.md#deacl.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from daebench.data import ImageData, to_float
from daebench.plugins import Work, capped
from daebench.encoders.backbones import Encoder
from daebench.runtime import batches, seed_everything
from daebench.training import pgd, restore_rng, rng_state, warmup_cosine_lr
from daebench.defenses.base import DefendedModel, Defense, SpeedSwitches, register_defense


class DeACLParams(SpeedSwitches):
    epochs: int = Field(100, ge=1, description="training epochs over D_f")
    batch_size: int = Field(256, ge=1, description="clean images per step (the student sees 2x: clean + adversarial)")
    lr: float = Field(0.5, gt=0, description="SGD peak lr (the script's 0.5 for batch 256)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay, on every student parameter")
    warmup_epochs: int = Field(10, ge=0, description="linear warm-up epochs before the cosine")
    warmup_start_lr: float = Field(0.003, ge=0, description="lr of the first warm-up epoch (pl_bolts' "
                                                             "LinearWarmupCosineAnnealingLR, as the reference)")
    lr_interval: Literal["epoch", "step"] = Field(
        "epoch", description="`epoch`: the lr changes once per epoch (the reference's Lightning scheduler); "
                             "`step`: the same warm-up + cosine evaluated at every optimiser step")
    drop_last: bool = Field(True, description="drop the last incomplete batch of each epoch (the reference's "
                                              "pre-training DataLoader does)")
    eps: float = Field(8 / 255, gt=0, le=1, description="L-inf budget of the training attack")
    step_size: float = Field(2 / 255, gt=0, description="sign-step size of the training attack")
    steps: int = Field(5, ge=0, description="steps of the training attack")
    clamp_start: bool = Field(False, description="clamp the random start to [0, 1] before the first gradient; the "
                                                 "reference clamps only after each step")
    adv_weight: float = Field(2.0, ge=0, description="weight of cos(s(x'), s(x)) (the reference's trades_k)")
    bn_batches: Literal["joint", "separate"] = Field(
        "joint", description="`joint`: clean and adversarial images go through the student as one concatenated "
                             "batch, so BatchNorm normalises them with shared statistics (the reference); "
                             "`separate`: two forwards, each with its own batch statistics")
    crop_padding: int = Field(4, ge=0, description="zero padding of the random crop")
    max_samples: int | None = Field(None, ge=1, description="use only the first N of D_f (CPU profiles)")


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding, zero fill) + RandomHorizontalFlip, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, [padding] * 4)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, oy[i]: oy[i] + h, ox[i]: ox[i] + w] for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def student_features(student: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                     bn_batches: str) -> tuple[torch.Tensor, torch.Tensor]:
    """s(x), s(x') in train mode. `joint` is one forward of cat([x, x']) split in two, so
    BatchNorm sees (and records in its running statistics) one 2B batch, as the reference."""
    if bn_batches == "joint":
        both = student(torch.cat([x, x_adv]))
        return both[: len(x)], both[len(x):]
    return student(x), student(x_adv)


def deacl_objective(clean: torch.Tensor, adv: torch.Tensor, target: torch.Tensor, adv_weight: float) -> torch.Tensor:
    """-mean cos(s(x), t(x)) - adv_weight * mean cos(s(x'), s(x)): keep the clean feature where
    the teacher put it and pull the adversarial one onto it (neither term is detached)."""
    return -F.cosine_similarity(clean, target).mean() - adv_weight * F.cosine_similarity(adv, clean).mean()


@register_defense("deacl")
class DeACL(Defense):
    """DeACL stage 2: distil the victim into an adversarially robust student, without labels."""

    Params = DeACLParams

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Per image and epoch: the PGD's steps, the joint clean + adversarial training
        forward + backward, and the frozen teacher's forward."""
        p = cls.Params.model_validate(params)
        seen = capped(p, images) * p.epochs
        return Work(train=seen * (p.steps + 2), forward=seen)
    version = 2  # 2: joint BatchNorm forward, per-epoch lr from 0.003, unclamped start, drop_last (the reference)
    profiles = {"tiny": {"epochs": 2, "batch_size": 128, "lr": 0.05, "warmup_epochs": 0, "steps": 3,
                         "step_size": 3 / 255}}

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        p = self.params
        generator = seed_everything(self.seed)
        teacher = copy.deepcopy(victim).to(self.device).eval().requires_grad_(False)
        student = copy.deepcopy(victim).to(self.device).requires_grad_(True)
        fast_student, fast_teacher = self.fast_encoder(student), self.fast_encoder(teacher)
        optimizer = torch.optim.SGD(student.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        images = data.x_train[: p.max_samples] if p.max_samples else data.x_train
        per_epoch = self.batches_per_epoch(len(images))
        history, first_epoch = [], 0
        checkpoint = self.checkpoint("deacl")
        if (state := checkpoint.load()) is not None:  # resume a killed run exactly
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state, generator)
            history, first_epoch = list(state["history"]), int(state["epoch"]) + 1
        step = first_epoch * per_epoch
        for epoch in tqdm(range(first_epoch, p.epochs), desc="defend:deacl", leave=False, disable=not self.progress):
            running, count = torch.zeros((), device=self.device), 0
            for idx in batches(len(images), p.batch_size, generator, drop_last=p.drop_last):
                for group in optimizer.param_groups:
                    group["lr"] = self.learning_rate(epoch, step, per_epoch)
                x = random_crop_flip(to_float(images[idx]), p.crop_padding, generator).to(self.device)
                loss = self.loss(fast_student, fast_teacher, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running = running + loss.detach().float() * len(idx)  # on the device: no host sync per step
                count += len(idx)
                step += 1
            history.append(float(running) / max(count, 1))
            checkpoint.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                             "history": history, **rng_state(generator)})
        return DefendedModel([self.plain_encoder(student).eval()], {"train_loss": history})

    def batches_per_epoch(self, n: int) -> int:
        p = self.params
        if p.drop_last and n >= p.batch_size:
            return n // p.batch_size
        return math.ceil(n / p.batch_size)

    def learning_rate(self, epoch: int, step: int, per_epoch: int) -> float:
        """Linear warm-up from `warmup_start_lr`, then cosine to 0, by epoch (the reference) or by step."""
        p = self.params
        if p.lr_interval == "epoch":
            return warmup_cosine_lr(epoch, p.warmup_epochs, p.epochs, p.lr, p.warmup_start_lr)
        return warmup_cosine_lr(step, p.warmup_epochs * per_epoch, p.epochs * per_epoch, p.lr, p.warmup_start_lr)

    def adversarial_examples(self, student: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """PGD with the student in eval mode, maximising -cos(s(x'), t(x)) from a uniform random start."""
        p = self.params
        student.eval()
        x_adv = pgd(lambda z: -F.cosine_similarity(student(z), target).sum(), x, p.eps, p.step_size, p.steps,
                    random_start=True, clamp_start=p.clamp_start).x_adv
        student.train()
        return x_adv

    def loss(self, student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        with torch.no_grad():
            target = teacher(x)
        x_adv = self.adversarial_examples(student, x, target)
        clean, adv = student_features(student, x, x_adv, p.bn_batches)
        return deacl_objective(clean, adv, target, p.adv_weight)
