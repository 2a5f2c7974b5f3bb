"""DeACL stage 2 (Zhang et al., ECCV 2022): adversarial distillation of the public encoder.

The student starts as a copy of the victim; the victim itself is the frozen
teacher. Each step: random crop (padding 4) + flip; PGD on the student (eps 8/255,
random start, 5 steps of 2/255, BatchNorm in eval mode) pushes the student's feature
of x' away from the teacher's feature of x (maximising -cos); then
    loss = -mean cos(s(x), t(x)) - 2 * mean cos(s(x'), s(x))
keeps clean features where the teacher put them and pulls adversarial ones onto
them. SGD (momentum 0.9) lr 0.5, weight decay 5e-4, linear warm-up then cosine,
as the reference scripts use (100 epochs, batch 256, 10 warm-up epochs). No labels
are used: the defense needs only the images of D_f.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from benchmark.data import ImageData
from benchmark.encoders.backbones import Encoder
from benchmark.encoders.ssl.base import _lr_factor
from benchmark.runtime import batches, seed_everything
from defenses.base import DefendedModel, Defense, SpeedSwitches, register_defense


class DeACLParams(SpeedSwitches):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.5, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    eps: float = Field(8 / 255, gt=0, le=1)
    step_size: float = Field(2 / 255, gt=0)
    steps: int = Field(5, ge=0)
    adv_weight: float = Field(2.0, ge=0, description="weight of cos(s(x'), s(x)) (the reference's trades_k)")
    crop_padding: int = Field(4, ge=0)
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


@register_defense("deacl")
class DeACL(Defense):
    """DeACL stage 2: distil the victim into an adversarially robust student, without labels."""

    Params = DeACLParams
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
        per_epoch = -(-len(images) // p.batch_size)
        total, step, history, first_epoch = p.epochs * per_epoch, 0, [], 0
        checkpoint = self.checkpoint("deacl")
        if (state := checkpoint.load()) is not None:  # resume a killed run exactly
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng"):
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            history, first_epoch = list(state["history"]), int(state["epoch"]) + 1
            step = first_epoch * per_epoch
        for epoch in tqdm(range(first_epoch, p.epochs), desc="defend:deacl", leave=False, disable=not self.progress):
            running, count = 0.0, 0
            for idx in batches(len(images), p.batch_size, generator):
                for group in optimizer.param_groups:
                    group["lr"] = p.lr * _lr_factor(step, total, p.warmup_epochs * per_epoch)
                x = random_crop_flip(images[idx].float().div(255), p.crop_padding, generator).to(self.device)
                loss = self.loss(fast_student, fast_teacher, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += float(loss.detach()) * len(idx)
                count += len(idx)
                step += 1
            history.append(running / max(count, 1))
            checkpoint.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                             "history": history, "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
        return DefendedModel([self.plain_encoder(student).eval()], {"train_loss": history})

    def loss(self, student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        with torch.no_grad():
            target = teacher(x)
        student.eval()
        x_adv = x.detach() + torch.empty_like(x).uniform_(-p.eps, p.eps)
        x_adv = x_adv.clamp(0, 1)
        for _ in range(p.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(-F.cosine_similarity(student(x_adv), target).mean(), x_adv)
            with torch.no_grad():
                x_adv = torch.min(torch.max(x_adv + p.step_size * grad.sign(), x - p.eps), x + p.eps).clamp(0, 1)
        student.train()
        clean = student(x)
        return -F.cosine_similarity(clean, target).mean() - p.adv_weight * F.cosine_similarity(student(x_adv.detach()), clean).mean()
