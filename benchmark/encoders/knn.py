"""Weighted kNN accuracy of frozen features, as solo-learn and AdvEncoder evaluate encoders.

k = 20 neighbours by cosine similarity, votes weighted by exp(sim / T), T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor, train_labels: torch.Tensor,
    test_features: torch.Tensor, test_labels: torch.Tensor,
    k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> float:
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        sim = test[start:start + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, train_labels[top_idx], weights)
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return correct / len(test)
