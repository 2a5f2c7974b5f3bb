"""Downstream classification heads, trained on cached features of a frozen encoder.

The head and its schedule follow the reference code (AdvEncoder / Gen-AF / ZePAD's
NonLinearClassifier): Linear(d,d)-ReLU-Dropout(0.2)-Linear(d,d)-ReLU-Linear(d,C), d the
feature dimension; Adam lr 5e-3, weight decay 8e-4, lr x0.96 per epoch, batch 256, 20
epochs (50 for ImageNet20: `heads_by_dataset` in a grid). Training on features computed
once (not re-encoding images every epoch) is exact because the encoder is frozen and in
eval mode, and it is what makes a grid of many heads cheap. docs/FIDELITY.md#heads.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from daebench.runtime import batches, seed_everything


class HeadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int | None = Field(None, ge=1, description="hidden width; None: the feature dimension, as the reference")
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(8e-4, ge=0)
    lr_decay: float = Field(0.96, gt=0, le=1)
    batch_size: int = Field(256, ge=1)


def make_head(feature_dim: int, num_classes: int, params: HeadParams | None = None) -> nn.Sequential:
    p = params or HeadParams()
    hidden = p.hidden or feature_dim
    return nn.Sequential(
        nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(p.dropout),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def head_optimizer(head: nn.Module, params: HeadParams) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.Adam(head.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.lr_decay)


def train_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, params: HeadParams, seed: int,
    device: torch.device = torch.device("cpu"),
) -> nn.Sequential:
    """Train a fresh head on fixed features; deterministic under `seed`."""
    gen = seed_everything(seed)
    head = make_head(features.shape[1], num_classes, params).to(device)
    opt, sched = head_optimizer(head, params)
    loss_fn = nn.CrossEntropyLoss()
    features, labels = features.to(device), labels.to(device)
    for _ in range(params.epochs):
        head.train()
        for idx in batches(len(features), params.batch_size, gen):
            opt.zero_grad(set_to_none=True)
            loss_fn(head(features[idx]), labels[idx]).backward()
            opt.step()
        sched.step()
    return head.eval()


@torch.no_grad()
def predict_logits(head: nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    head.eval()
    return torch.cat([head(features[i:i + batch_size]) for i in range(0, len(features), batch_size)])
