"""The SPICE network (SPEC §1): a sparse residual U-Net with one encoder and two decoders.

Input per voxel: [x̂, ŷ, ẑ, E] with x̂ = (x − L/2)/(L/2) and E in MeV. Level i (stride 2^i,
i = 0..depth) has (i+1)·F channels. The embedding decoder ends in 4 channels (offset o (3),
margin logit), the seediness decoder in 1. Outputs, aligned with the batch rows:
embedding = tanh(o) + x̂ (M,3), margin = 2·sigmoid (M,1) in (0,2), seediness = sigmoid (M,1).
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .sparse import backend_name, get_backend
from .sparse.layers import BatchNorm, DownConv2, LeakyReLU, Linear, SubmanifoldConv3, UpConv2, cat
from .sparse.tensor import SparseTensor


def norm_act(channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(BatchNorm(channels), LeakyReLU(slope))


class ResidualBlock(nn.Module):
    """BN → LeakyReLU → subm conv3 → BN → LeakyReLU → subm conv3, plus identity (1×1 linear if widths differ)."""

    def __init__(self, cin: int, cout: int, slope: float, backend: str):
        super().__init__()
        self.body = nn.Sequential(norm_act(cin, slope), SubmanifoldConv3(cin, cout, backend, leaky_slope=slope),
                                  norm_act(cout, slope), SubmanifoldConv3(cout, cout, backend, leaky_slope=slope))
        self.shortcut = nn.Identity() if cin == cout else Linear(cin, cout, bias=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.body(x)
        return y.with_feats(y.feats + self.shortcut(x).feats)


def blocks(cin: int, cout: int, reps: int, slope: float, backend: str) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(cin if r == 0 else cout, cout, slope, backend) for r in range(reps)])


class Decoder(nn.Module):
    """Up (BN → LeakyReLU → transposed conv2 onto encoder level i), concat encoder output, reps blocks;
    then BN → 1×1 linear head with `out_channels`."""

    def __init__(self, filters: int, depth: int, reps: int, slope: float, backend: str, out_channels: int):
        super().__init__()
        width = [(i + 1) * filters for i in range(depth + 1)]
        self.ups = nn.ModuleList(norm_act(width[i + 1], slope) for i in range(depth))
        self.up_convs = nn.ModuleList(UpConv2(width[i + 1], width[i], backend, slope) for i in range(depth))
        self.blocks = nn.ModuleList(blocks(2 * width[i], width[i], reps, slope, backend) for i in range(depth))
        self.norm = BatchNorm(filters)
        self.head = Linear(filters, out_channels)

    def forward(self, skips: list[SparseTensor]) -> torch.Tensor:
        x = skips[-1]
        for i in reversed(range(len(self.blocks))):
            x = self.up_convs[i](self.ups[i](x), skips[i])
            x = self.blocks[i](cat([skips[i], x]))
        return self.head(self.norm(x)).feats


class SPICE(nn.Module):
    """SPICE(filters=32, depth=6, reps=2, spatial_size=512, leaky_slope=0.33, backend=None).

    forward(batch, seediness=True) -> {"embedding": (M,3), "margin": (M,1), "seediness": (M,1)} for a
    spice.data.Batch ("seediness" only when asked for).
    `backend` None means env SPICE_SPARSE_BACKEND, else "torch".
    """

    def __init__(self, filters: int = 32, depth: int = 6, reps: int = 2, spatial_size: int = 512,
                 leaky_slope: float = 0.33, backend: str | None = None):
        super().__init__()
        if filters < 1 or reps < 1 or depth < 0:
            raise ValueError(f"SPICE needs filters >= 1, reps >= 1, depth >= 0 (got {filters}, {reps}, {depth})")
        if 2 ** depth > spatial_size:
            raise ValueError(f"depth {depth} needs 2^{depth} = {2 ** depth} <= spatial_size, got {spatial_size}; "
                             f"use depth <= {spatial_size.bit_length() - 1}")
        self.filters, self.depth, self.reps = filters, depth, reps
        self.spatial_size, self.leaky_slope = spatial_size, leaky_slope
        self.backend = backend_name(backend)
        b, s = self.backend, leaky_slope
        width = [(i + 1) * filters for i in range(depth + 1)]
        self.input_conv = SubmanifoldConv3(4, filters, b, leaky_slope=s)
        self.encoder = nn.ModuleList(blocks(width[i], width[i], reps, s, b) for i in range(depth + 1))
        self.downs = nn.ModuleList(nn.Sequential(norm_act(width[i], s), DownConv2(width[i], width[i + 1], b, leaky_slope=s))
                                   for i in range(depth))
        self.embedding_decoder = Decoder(filters, depth, reps, s, b, out_channels=4)
        self.seediness_decoder = Decoder(filters, depth, reps, s, b, out_channels=1)

    def normalized_coords(self, coords: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(M,4) [b,x,y,z] -> (M,3) x̂ = (x − L/2)/(L/2)."""
        half = self.spatial_size / 2
        return (coords[:, 1:].to(dtype) - half) / half

    def forward(self, batch, seediness: bool = True) -> dict[str, torch.Tensor]:
        """The outputs for `batch`; seediness=False skips the seediness decoder (training stage 1, where
        it is frozen and in eval mode) and leaves "seediness" out of the result."""
        if batch.spatial_size > self.spatial_size:
            raise ValueError(f"batch grid {batch.spatial_size}^3 is larger than the model's spatial_size "
                             f"{self.spatial_size}; build SPICE(spatial_size={batch.spatial_size})")
        param = self.input_conv.weight
        coords = batch.coords.to(param.device)
        xhat = self.normalized_coords(coords, param.dtype)
        feats = torch.cat([xhat, batch.energy.to(param.device, param.dtype)[:, None]], dim=1)
        x = self.input_conv(get_backend(self.backend).make_input(coords, feats))
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x)
            skips.append(x)
            if i < self.depth:
                x = self.downs[i](x)
        emb = self.embedding_decoder(skips)
        out = {"embedding": torch.tanh(emb[:, :3]) + xhat, "margin": 2 * torch.sigmoid(emb[:, 3:4])}
        if seediness:
            out["seediness"] = torch.sigmoid(self.seediness_decoder(skips))
        return out

    def seediness_parameters(self) -> list[nn.Parameter]:
        """Seediness decoder and its head (frozen in training stage 1)."""
        return list(self.seediness_decoder.parameters())

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Everything else: input conv, shared encoder, embedding decoder and head."""
        seed = {id(p) for p in self.seediness_decoder.parameters()}
        return [p for p in self.parameters() if id(p) not in seed]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: SPICE) -> pd.DataFrame:
    """Architecture summary (paper Figure 3): one row per stage with columns
    layer, level (stride 2^level), in_channels, channels (out), parameters."""
    rows = []

    def add(layer: str, level: int, module: nn.Module, cin: int, cout: int):
        rows.append({"layer": layer, "level": level, "in_channels": cin, "channels": cout,
                     "parameters": count_parameters(module, trainable_only=False)})

    f, w = model.filters, [(i + 1) * model.filters for i in range(model.depth + 1)]
    add("input conv 3³", 0, model.input_conv, 4, f)
    for i in range(model.depth + 1):
        add(f"encoder {model.reps}× residual block", i, model.encoder[i], w[i], w[i])
        if i < model.depth:
            add("down conv 2³ stride 2", i, model.downs[i], w[i], w[i + 1])
    for name, dec, out in (("embedding", model.embedding_decoder, 4), ("seediness", model.seediness_decoder, 1)):
        for i in reversed(range(model.depth)):
            add(f"{name} up conv 2³ stride 2", i, nn.ModuleList([dec.ups[i], dec.up_convs[i]]), w[i + 1], w[i])
            add(f"{name} concat + {model.reps}× residual block", i, dec.blocks[i], 2 * w[i], w[i])
        add(f"{name} BN + linear head", 0, nn.ModuleList([dec.norm, dec.head]), f, out)
    frame = pd.DataFrame(rows)
    if int(frame["parameters"].sum()) != count_parameters(model, trainable_only=False):
        raise AssertionError("describe() missed some parameters")
    return frame
