"""Weighted k-NN classification on frozen features (the DINO protocol).

Features are L2-normalised; each test sample retrieves its k most cosine-similar train samples, and
neighbour j votes for its label with weight ``exp(sim_j / T)`` (k = 20, T = 0.07 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unissl.config import arg
from unissl.errors import ConfigError, UnisslError
from unissl.eval.probe import topk_accuracy


@torch.no_grad()
def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
               k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, C): the sum of ``exp(cos / T)`` over the k nearest train samples of each class."""
    if train_x.shape[0] < k:
        raise ConfigError("k", f"{k} is larger than the {train_x.shape[0]} train samples of the k-NN; lower it")
    if temperature <= 0:
        raise UnisslError(f"kNN: temperature must be positive, got {temperature}")
    tr = F.normalize(train_x.float(), dim=1)
    out = []
    for i in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[i:i + chunk].float(), dim=1)
        sim, idx = (q @ tr.T).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_y[idx].long(), (sim / temperature).exp())
        out.append(votes)
    return torch.cat(out)


@dataclass
class KNNConfig:
    """The weighted k-NN protocol's settings (DINO's defaults), shared by ``eval knn``, ``eval transfer`` and the
    online evaluation."""

    k: int = arg(20, help="number of neighbours")
    temperature: float = arg(0.07, help="temperature T of the exp(sim / T) vote weights")

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ConfigError("k", f"must be positive, got {self.k}")
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be positive, got {self.temperature}")


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of the weighted k-NN classifier."""
    return topk_accuracy(knn_scores(train_x, train_y, test_x, num_classes, k, temperature), test_y)
