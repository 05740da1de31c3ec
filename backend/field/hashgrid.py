"""Multiresolution hash-grid encoding (Instant-NGP), for 3D and 4D inputs, in plain PyTorch.

Level l has resolution N_l = floor(N_min * b^l), b = exp(ln(N_max / N_min) / (L - 1)). A point
x in [0, 1]^d is scaled to x * N_l; the 2^d grid corners around it are looked up and blended
d-linearly. A level whose dense grid ((N_l + 1)^d entries) fits in the table is indexed densely
(no collisions); finer levels use the spatial hash XOR_i(c_i * pi_i) mod T. The table entries
start uniform in [-1e-4, 1e-4].

All levels are evaluated in one batched gather, which is what torch.compile fuses well; the
module is written so that `torch.compile(HashGrid(...))` works unchanged. The backward pass is
written by hand (`_Interpolate`): it recomputes indices rather than storing them.
Indices are int32 (half the memory traffic of int64): wrap-around products keep the low bits,
so the hash equals tinycudann's uint32 one.

On CUDA with Triton the same interpolation runs as Triton kernels (`hashgrid_triton`), which
keep the per-corner work in registers; `backend="torch"` (or ANIMATE4D_HASHGRID=torch) keeps
the PyTorch path everywhere.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..runtime import switches
from . import hashgrid_triton

# Instant-NGP's primes; the first dimension is not scrambled.
PRIMES = (1, 2654435761, 805459861, 3674653429)


class HashGrid(nn.Module):
    def __init__(self, dims: int = 3, levels: int = 16, features: int = 2,
                 log2_table: int = 19, base_resolution: int = 16,
                 finest_resolution: int = 2048, backend: str | None = None):
        super().__init__()
        backend = backend or switches.active().hashgrid
        if backend not in ("auto", "torch", "triton"):
            raise ValueError("backend must be auto, torch or triton")
        self.backend = backend
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
        if offsets[-1] >= 2**31:
            raise ValueError("the table (levels x entries) must hold fewer than 2^31 rows")
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.int32),
                             persistent=False)
        # Strides of the dense layout per level: (n+1)^i (unused, 0, on hashed levels).
        strides = torch.tensor([[(n + 1) ** i if d else 0 for i in range(dims)]
                                for n, d in zip(res, dense, strict=True)],
                               dtype=torch.int32)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("primes", torch.tensor(
            [p - 2**32 if p >= 2**31 else p for p in PRIMES[:dims]], dtype=torch.int32),
                             persistent=False)
        # Levels grow finer, so the densely indexed ones come first; hashed levels use the
        # whole (power-of-two) table, so "mod T" is a mask, as in tinycudann.
        self.n_dense = sum(dense)
        if any(dense[self.n_dense:]):
            raise AssertionError("dense levels must precede hashed ones")
        self.hash_mask = table - 1
        # Resolved here, not in forward: a cached call inside forward is a graph break for
        # torch.compile, and the resumed frame trips a Dynamo assertion on CUDA (torch 2.11).
        self._interpolate = _interpolate(self.n_dense, self.hash_mask)
        self._kernels = (hashgrid_triton.interpolate_function(self.n_dense, self.hash_mask,
                                                              PRIMES[:dims], tuple(sizes))
                         if hashgrid_triton.triton is not None else None)
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor, group: int = 1) -> torch.Tensor:
        """(n, d) points in [0, 1]^d -> (n, L, F) features per level (the kernels' result is
        stored level-major, strides (F, n F, 1): `MLP` reads it as it is; `.flatten(1)` gives
        (n, L F) rows). `group` G: a hint that x is G stacked copies of nearby points (rows
        k n / G + i, e.g. a point and its finite-difference neighbours), which the kernels
        merge table updates across; the result is the same whatever it says."""
        x = x.to(self.embeddings.dtype).clamp(0.0, 1.0)
        if self._use_kernels(x):
            out = _run_kernels(self._kernels, x, self.embeddings, self.resolution,
                               self.strides, self.offsets, group)
        else:
            out = self._interpolate.apply(x, self.embeddings, self.resolution, self.strides,
                                          self.primes, self.offsets)
        return out

    def fused_on(self, device) -> bool:
        """Whether points on `device` go through the Triton kernels, which keep each point's
        corners in registers: no per-point transients (the PyTorch path gathers ~6 KB per 4D
        point), so callers may pass many more points per call."""
        return (self.backend != "torch" and hashgrid_triton.available(device)
                and self.embeddings.dtype == torch.float32)

    def _use_kernels(self, x: torch.Tensor) -> bool:
        ok = self.fused_on(x.device)
        if self.backend == "triton" and not ok:
            raise RuntimeError("the Triton hash grid needs CUDA, Triton and float32 tables")
        return ok


@torch.compiler.disable
def _run_kernels(fn, x, embeddings, resolution, strides, offsets, group):
    """Outside torch.compile's graphs: compiled fields call the kernels as they are."""
    return fn.apply(x, embeddings, resolution, strides, offsets, group)


def _combine(pairs: torch.Tensor, op) -> torch.Tensor:
    """(n, L, d, 2) per-dimension values for corner offsets 0 and 1 -> (n, L, 2^d) values of
    every corner, op-combined across dimensions; corner c has offset (c >> i) & 1 in dim i.
    Building it one dimension at a time costs 2 + 4 + ... + 2^d operations per point and
    level instead of d * 2^d."""
    out = pairs[:, :, 0]  # (n, L, 2)
    for i in range(1, pairs.shape[2]):
        out = torch.stack([op(out, pairs[:, :, i, :1]), op(out, pairs[:, :, i, 1:])], 2)
        out = out.flatten(2)
    return out


def _lookup(x, resolution, strides, primes, offsets, n_dense: int, hash_mask: int):
    """Table rows (n, L, C) of the 2^d corners around each point, and the per-dimension
    weight factors (n, L, d, 2): (1 - frac, frac)."""
    pos = x.unsqueeze(1) * resolution[:, None].to(x.dtype)  # (n, L, d)
    base = pos.floor()
    frac = pos - base
    cell = base.to(torch.int32).unsqueeze(-1) + torch.arange(2, device=x.device,
                                                                dtype=torch.int32)  # (n, L, d, 2)
    parts = []
    if n_dense:
        parts.append(_combine(cell[:, :n_dense] * strides[:n_dense, :, None], torch.add))
    if n_dense < cell.shape[1]:
        hashed = _combine(cell[:, n_dense:] * primes[:, None], torch.bitwise_xor)
        parts.append(torch.bitwise_and(hashed, hash_mask))
    idx = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    factors = torch.stack([1.0 - frac, frac], -1)
    return idx + offsets[:, None], factors


@functools.cache
def _interpolate(n_dense: int, hash_mask: int) -> type:
    """d-linear interpolation of the table as an autograd Function with a hand-written backward,
    one class per grid layout (the layout's integers are constants of the class, so that
    torch.compile with dynamic shapes does not turn them into symbols).

    The backward recomputes the corner indices instead of saving them (an (n, L, 2^d) int32
    tensor, 268 MB for 2^18 4D points), scatters the weighted output gradient into the table,
    and gives d/dx analytically (the motion field's warp needs it) without autograd's generic
    product backward.
    """

    class Interpolate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, embeddings, resolution, strides, primes, offsets):
            grid = (resolution, strides, primes, offsets)
            idx, factors = _lookup(x, *grid, n_dense, hash_mask)
            w = _combine(factors, torch.mul)  # (n, L, C)
            out = (w.unsqueeze(-1) * embeddings[idx]).sum(2)  # (n, L, F)
            ctx.save_for_backward(x, embeddings, *grid)
            return out

        @staticmethod
        def backward(ctx, grad):
            x, embeddings, *grid = ctx.saved_tensors
            idx, factors = _lookup(x, *grid, n_dense, hash_mask)
            grad_x = grad_emb = None
            if ctx.needs_input_grad[1]:
                w = _combine(factors, torch.mul)
                vals = (w.unsqueeze(-1) * grad.unsqueeze(2)).to(embeddings.dtype)
                grad_emb = torch.zeros_like(embeddings).index_add_(
                    0, idx.reshape(-1), vals.reshape(-1, embeddings.shape[1]))
            if ctx.needs_input_grad[0]:
                g_corner = (embeddings[idx] * grad.unsqueeze(2)).sum(-1)  # (n, L, C)
                slope = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device)
                grad_frac = []
                for i in range(x.shape[1]):  # d w_c / d frac_i: factor i -> -1 / +1
                    f = factors.clone()
                    f[:, :, i] = slope
                    grad_frac.append((g_corner * _combine(f, torch.mul)).sum(2))
                grad_x = (torch.stack(grad_frac, -1) * grid[0][:, None].to(x.dtype)).sum(1)
            return grad_x, grad_emb, None, None, None, None

    return Interpolate
