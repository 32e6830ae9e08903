"""nn.Modules over SparseTensor: feature-wise layers, and convolutions that own their weights.

Convolution weights are [K, Cin, Cout] with x-fastest kernel offsets (K = 27 or 8) whatever the
backend, so a state_dict moves between backends unchanged. The backend is kept by name and
resolved at call time (modules stay picklable).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import backend_name, get_backend
from .tensor import SparseTensor, cat

__all__ = ["BatchNorm", "LeakyReLU", "Linear", "SubmanifoldConv3", "DownConv2", "UpConv2", "cat"]


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the features (M, C) of all active sites of the batch.

    A single site in training mode has no spread: it is centred (output = bias) and the running
    statistics are left alone, instead of torch's error.
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        f = x.feats
        if self.training and f.shape[0] <= 1:
            return x.with_feats((f - f.mean(0)) * (self.weight / math.sqrt(self.eps)) + self.bias)
        return x.with_feats(super().forward(f))


class LeakyReLU(nn.LeakyReLU):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(F.leaky_relu(x.feats, self.negative_slope))


class Linear(nn.Linear):
    """1x1 linear map of the features (M, Cin) -> (M, Cout)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(super().forward(x.feats))


class _Conv(nn.Module):
    """Weight [K, Cin, Cout], no bias (every conv is followed by BatchNorm); Kaiming-normal init."""

    kernel_volume = 27

    def __init__(self, in_channels: int, out_channels: int, backend: str | None = None,
                 fan_in_volume: int | None = None, leaky_slope: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backend = backend_name(backend)
        self.weight = nn.Parameter(torch.empty(self.kernel_volume, in_channels, out_channels))
        fan_in = in_channels * (fan_in_volume or self.kernel_volume)
        std = math.sqrt(2.0 / (1.0 + leaky_slope ** 2) / fan_in)
        nn.init.normal_(self.weight, 0.0, std)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_volume={self.kernel_volume}, backend={self.backend}"


class SubmanifoldConv3(_Conv):
    """3^3 submanifold convolution: same sites in, same sites out."""

    kernel_volume = 27

    def forward(self, x: SparseTensor) -> SparseTensor:
        return get_backend(self.backend).submanifold_conv3(x, self.weight)


class DownConv2(_Conv):
    """2^3 stride-2 convolution onto the coarse sites floor(c/2)."""

    kernel_volume = 8

    def forward(self, x: SparseTensor) -> SparseTensor:
        return get_backend(self.backend).downsample_conv2(x, self.weight)


class UpConv2(_Conv):
    """Transposed 2^3 stride-2 convolution onto the sites of `target` (the matching finer level)."""

    kernel_volume = 8

    def __init__(self, in_channels: int, out_channels: int, backend: str | None = None, leaky_slope: float = 0.0):
        super().__init__(in_channels, out_channels, backend, fan_in_volume=1, leaky_slope=leaky_slope)

    def forward(self, x: SparseTensor, target: SparseTensor) -> SparseTensor:
        return get_backend(self.backend).upsample_conv2(x, self.weight, target)
