"""The head learns on standardised features: StandardizedHead, and the train-split statistics
it standardises with (feature_statistics). Its `fold()` writes the standardisation back into the
linear layer's weights, so the saved head is still one nn.Linear(512, 1) on raw features."""
from __future__ import annotations

import torch
from torch import nn

from .probe import floored_scale, fold_standardization


class StandardizedHead(nn.Module):
    """`linear` applied to (x - mean) / std: the head learns on standardised features, so one
    learning rate suits any backbone's feature scale. `fold()` writes the standardisation into
    `linear`'s weights, which then act on raw features: the saved head stays nn.Linear(512, 1)."""

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, x):
        return self.linear((x - self.mean) / self.std)

    def fold(self) -> nn.Linear:
        weight, bias = fold_standardization(self.linear.weight.data, self.linear.bias.data,
                                            self.mean, self.std)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        return self.linear


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation over the train split (in float64), the standard
    deviation floored as the probe's is (probe.floored_scale: no near-constant feature is blown up)."""
    x = features.double()
    return x.mean(dim=0), floored_scale(x.std(dim=0, unbiased=False))
