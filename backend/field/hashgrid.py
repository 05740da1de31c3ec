"""Multiresolution hash-grid encoding (Instant-NGP), for 3D and 4D inputs, in plain PyTorch.

Level l has resolution N_l = floor(N_min * b^l), b = exp(ln(N_max / N_min) / (L - 1)). A point
x in [0, 1]^d is scaled to x * N_l; the 2^d grid corners around it are looked up and blended
d-linearly. A level whose dense grid ((N_l + 1)^d entries) fits in the table is indexed densely
(no collisions); finer levels use the spatial hash XOR_i(c_i * pi_i) mod T. The table entries
start uniform in [-1e-4, 1e-4].

All levels are evaluated in one batched gather, which is what torch.compile fuses well; the
module is written so that `torch.compile(HashGrid(...))` works unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Instant-NGP's primes; the first dimension is not scrambled.
PRIMES = (1, 2654435761, 805459861, 3674653429)


class HashGrid(nn.Module):
    def __init__(self, dims: int = 3, levels: int = 16, features: int = 2,
                 log2_table: int = 19, base_resolution: int = 16,
                 finest_resolution: int = 2048):
        super().__init__()
        if dims not in (3, 4):
            raise ValueError("HashGrid encodes 3D or 4D points")
        if levels < 1 or features < 1 or not (4 <= log2_table <= 26):
            raise ValueError("levels, features >= 1 and log2_table in 4..26")
        self.dims, self.levels, self.features = dims, levels, features
        table = 2**log2_table
        growth = math.exp((math.log(finest_resolution) - math.log(base_resolution))
                          / max(levels - 1, 1))
        res, sizes, dense = [], [], []
        for lvl in range(levels):
            n = math.floor(base_resolution * growth**lvl)
            entries = (n + 1) ** dims
            res.append(n)
            dense.append(entries <= table)
            sizes.append(min(entries, table))
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.int64),
                             persistent=False)
        # Strides of the dense layout per level: (n+1)^i.
        strides = torch.tensor([[(n + 1) ** i for i in range(dims)] for n in res],
                               dtype=torch.int64)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES[:dims], dtype=torch.int64),
                             persistent=False)
        corners = torch.tensor([[(c >> i) & 1 for i in range(dims)] for c in range(2**dims)],
                               dtype=torch.int64)
        self.register_buffer("corners", corners, persistent=False)
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def level_index(self, corner: torch.Tensor) -> torch.Tensor:
        """Table rows of integer grid corners (..., L, d) -> (..., L), offsets included."""
        dense_idx = (corner * self.strides).sum(-1)
        hashed = corner[..., 0] * self.primes[0]
        for i in range(1, self.dims):
            hashed = torch.bitwise_xor(hashed, corner[..., i] * self.primes[i])
        idx = torch.where(self.dense, dense_idx, hashed % self.sizes)
        return idx + self.offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) points in [0, 1]^d -> (n, L * F) features."""
        pos = x.float().clamp(0.0, 1.0).unsqueeze(1) * self.resolution[:, None]  # (n, L, d)
        base = pos.floor()
        frac = pos - base
        # All 2^d corners at once: one gather forward, one scatter-add backward.
        corner = base.long().unsqueeze(2) + self.corners  # (n, L, C, d)
        idx = self.level_index(corner.transpose(1, 2)).transpose(1, 2)  # (n, L, C)
        w = torch.where(self.corners.bool(), frac.unsqueeze(2), 1.0 - frac.unsqueeze(2))
        w = w.prod(-1)  # (n, L, C)
        feats = self.embeddings[idx]  # (n, L, C, F)
        return (w.unsqueeze(-1) * feats).sum(2).reshape(x.shape[0], -1)
