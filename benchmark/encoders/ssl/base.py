"""SSL pre-training: the loop is shared, a method writes its heads and its loss.

solo-learn's checkpoint zoo is gone, so the harness pre-trains its own victims.
A method is an `nn.Module` holding the encoder being trained plus its heads
(projector, predictor, momentum copies, queues); it implements
`training_loss(view1, view2)` and, if it has momentum parts, `after_step(progress)`.
A method that needs more says so: `uses_labels = True` (SupCon) adds `labels=`,
`params.local_crops > 0` (multi-crop SwAV / DINO) adds `local_views=[...]`, and
`before_optimizer_step()` may edit gradients (frozen prototypes).
The base owns what solo-learn's `BaseMethod` owns: the optimiser (solo-learn's LARS,
SGD or Adam; lr scaled by batch / 256), the per-step linear warm-up + cosine, the
two-view augmentation, seeding, optional bf16 autocast and channels_last.
The `paper` profile of each method is solo-learn's CIFAR config; the `tiny` profile
is a few epochs of a narrow ResNet for CPU runs. Step by step: docs/FIDELITY.md#ssl-<method>.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from daebench.compat import import_torchvision
from daebench.encoders.backbones import Encoder
from daebench.encoders.ssl.augment import AugmentParams, augment
from daebench.plugins import Configurable, Params, Work, capped, required
from daebench.registry import Registry
from daebench.training import warmup_cosine_lr
from daebench.runtime import batches, seed_everything

import_torchvision()  # lightly imports torchvision; must come first on CPU torch

Optimizer = Literal["lars", "sgd", "adam"]

SSL_METHODS: Registry = Registry(
    "SSL method", entry_point_group="daebench.ssl_methods",
    builtin_package="daebench.encoders.ssl",  # one module per method

)
register_ssl_method = SSL_METHODS.register


class SSLParams(Params):
    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=2)
    optimizer: Optimizer = "lars"
    lr: float = Field(0.4, gt=0, description="base lr for batch 256 (scaled linearly, as solo-learn)")
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: int = Field(10, ge=0)
    warmup_start_lr: float = Field(3e-5, ge=0, description="lr of the first warm-up step (solo-learn's default; "
                                                            "not scaled with the batch, as there)")
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the cosine")
    lars_eta: float = Field(0.02, gt=0, description="LARS trust coefficient (solo-learn's CIFAR configs: 0.02)")
    lars_clip_lr: bool = Field(True, description="LARS: cap the layer-wise lr at the global lr (solo-learn's clip_lr)")
    lars_exclude_bias_n_norm: bool = Field(True, description="LARS: 1-d parameters (biases, norms) skip the "
                                                             "adaptation and the weight decay, as solo-learn's LARS")
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    augment2: AugmentParams | None = Field(None, description="the second view's pipeline (asymmetric methods); None = same as the first")
    local_crops: int = Field(0, ge=0, description="multi-crop: extra small views (solo-learn's CIFAR configs use none)")
    local_crop_size: int = Field(16, ge=4)
    local_augment: AugmentParams = Field(default_factory=lambda: AugmentParams(crop_min_scale=0.05, crop_max_scale=0.14))
    max_samples: int | None = Field(None, ge=1, description="use only the first N training images")
    amp: bool = Field(False, description="bf16 autocast (CPU and CUDA)")
    channels_last: bool = False


TINY_PROFILE: dict[str, Any] = {
    # lr is per 256 images and scaled linearly with the batch, as solo-learn does for
    # every optimiser: 4e-3 is Adam at 1e-3 for the batch of 64 below (at 2.5e-4,
    # BYOL gained 3.5 kNN points over random init in 15 epochs; at 1e-3, 5.1).
    "epochs": 15, "optimizer": "adam", "lr": 4e-3, "weight_decay": 1e-6, "warmup_epochs": 0,
    "proj_hidden_dim": 512, "proj_output_dim": 128,
    # 64, not solo-learn's 256: on a 5k-image subset that is 79 optimiser steps per epoch
    # instead of 19 (the bundled grids pin batch 256 and lr 1e-3 where their results
    # were recorded).
    "batch_size": 64,
}


def tiny(**overrides: Any) -> dict[str, Any]:
    """The CPU profile shared by every recipe (narrow heads, Adam, few epochs) plus a method's own changes."""
    return {**TINY_PROFILE, **overrides}


class SSLMethod(nn.Module, Configurable):
    Params: ClassVar[type[SSLParams]] = SSLParams
    uses_labels: ClassVar[bool] = False  # supervised (SupCon): training_loss gets labels=

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Two views per image and epoch through the encoder (multi-crop's small views
        counted by area at a 32 px image); momentum-teacher methods add their forwards."""
        p = cls.Params.model_validate(params)
        seen = capped(p, images) * p.epochs
        views = 2 + p.local_crops * (p.local_crop_size / 32) ** 2
        return Work(train=seen * views, forward=seen * 2 if "base_tau" in type(p).model_fields else 0.0)

    def __init__(self, encoder: Encoder, params: SSLParams) -> None:
        super().__init__()
        self.encoder = encoder
        self.params = params
        self.epoch = 0  # set by the loop before each step (schedules counted in epochs)

    @required
    def training_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """Called between backward and the optimiser step (e.g. to drop frozen layers' gradients)."""

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step with progress = (steps before it) / total, in [0, 1)
        (momentum updates: the first update uses the base tau, as solo-learn)."""


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rates, as solo-learn's `solo/utils/lars.py` defines it.

    lightly's LARS differs (no `clip_lr`, no bias/norm exclusion), so the update solo-learn's
    recipes were tuned for is re-implemented: for a parameter p with gradient g,
    local = eta * |p| / (|g| + wd * |p| + eps), capped at 1 (as a fraction of lr) with
    `clip_lr`; d = local * (g + wd * p); then heavy-ball momentum and p -= lr * v.
    With `exclude_bias_n_norm`, 1-d parameters take plain SGD on g (no decay, no scaling)."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, eta: float = 1e-3,
                 eps: float = 1e-8, clip_lr: bool = False, exclude_bias_n_norm: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, clip_lr=clip_lr,
                        exclude_bias_n_norm=exclude_bias_n_norm)
        super().__init__(params, defaults)

    @staticmethod
    def _direction(p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The gradient after the layer-wise scaling and weight decay (before momentum)."""
        g, wd = p.grad, group["weight_decay"]
        if p.ndim == 1 and group["exclude_bias_n_norm"]:
            return g
        p_norm, g_norm = torch.norm(p), torch.norm(g)
        if p_norm == 0 or g_norm == 0:
            return g
        local = group["eta"] * p_norm / (g_norm + p_norm * wd + group["eps"])
        if group["clip_lr"]:
            local = torch.clamp(local / group["lr"], max=1.0)
        return (g + wd * p) * local

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = self._direction(p, group)
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                    d = state["momentum_buffer"]
                p.add_(d, alpha=-group["lr"])
        return loss


def _optimizer(params: SSLParams, module: nn.Module) -> torch.optim.Optimizer:
    lr = params.lr * params.batch_size / 256
    trainable = [p for p in module.parameters() if p.requires_grad]
    if params.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=lr, weight_decay=params.weight_decay)
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
    return LARS(trainable, lr=lr, momentum=params.momentum, weight_decay=params.weight_decay, eta=params.lars_eta,
                clip_lr=params.lars_clip_lr, exclude_bias_n_norm=params.lars_exclude_bias_n_norm)


def momentum_tau(progress: float, base: float, final: float) -> float:
    """solo-learn's MomentumUpdater: tau = final - (final - base) (cos(pi progress) + 1) / 2, where
    progress is the number of optimiser steps before the current one over the total."""
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def pretrain(
    method: str, params: SSLParams, encoder: Encoder, x_train: torch.Tensor, seed: int,
    device: torch.device, progress: bool = False, y_train: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train `encoder` in place with SSL method `method` on uint8 images; returns a log.

    `y_train` is used only by supervised recipes (SupCon)."""
    generator = seed_everything(seed)
    model: SSLMethod = SSL_METHODS.get(method)(encoder, params).to(device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if model.uses_labels and y_train is None:
        raise ValueError(f"SSL method {method!r} is supervised: it needs the training labels")
    x_train = x_train[: params.max_samples] if params.max_samples else x_train
    batch_size = min(params.batch_size, len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch_size)
    total = steps_per_epoch * params.epochs
    opt = _optimizer(params, model)
    base_lr = params.lr * params.batch_size / 256
    start_lr = params.warmup_start_lr if params.warmup_epochs else base_lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_lr(
        s, params.warmup_epochs * steps_per_epoch, total, base_lr, start_lr, params.min_lr) / base_lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=params.amp)
    history: list[float] = []
    step, started = 0, time.perf_counter()
    second = params.augment2 or params.augment
    # The uint8 images go to the device once, and the loss is summed there: no host
    # copy and no host synchronisation per step.
    x_device = x_train.to(device)
    y_device = y_train.to(device) if y_train is not None else None
    for epoch in tqdm(range(params.epochs), desc=f"pretrain:{method}", leave=False, disable=not progress):
        model.train()
        model.epoch = epoch
        total_loss = torch.zeros((), device=device)
        for idx in batches(len(x_train), batch_size, generator, drop_last=True):
            x = x_device[idx.to(device)].float().div_(255)
            v1, v2 = augment(x, params.augment, generator), augment(x, second, generator)
            extra: dict[str, Any] = {}
            if model.uses_labels:
                extra["labels"] = y_device[idx.to(device)]
            if params.local_crops:
                extra["local_views"] = [augment(x, params.local_augment, generator, size=params.local_crop_size)
                                        for _ in range(params.local_crops)]
            if params.channels_last:
                v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = model.training_loss(v1, v2, **extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.before_optimizer_step()
            opt.step()
            sched.step()
            model.after_step(step / total)  # steps before this one: solo-learn's momentum schedule
            step += 1
            total_loss += loss.detach().float()
        history.append(float(total_loss) / steps_per_epoch)  # one synchronisation per epoch
    encoder.eval()
    return {"loss_history": history, "steps": step, "train_seconds": time.perf_counter() - started}
