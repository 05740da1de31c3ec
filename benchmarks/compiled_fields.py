"""The fields under torch.compile, seen through the same interface as the plain modules: the
compiled variant that `render` and `extract` time beside the eager fields.

The number of points a renderer asks about changes every step (occupancy, pruning), and torch
2.11 on CUDA fails an internal Dynamo assertion for the hash grid's autograd.Function under
dynamic=True with gradients. So each call is padded to a multiple of BUCKET points: the compiled
graphs see a handful of static shapes (one per multiple up to the renderer's point chunk, for
each of grad and no-grad), each compiled once. Parameters, optimiser and checkpoints keep using
the plain modules: the wrappers share their weights.
"""

from __future__ import annotations

import torch

BUCKET = 2**18


def padded(fn, x: torch.Tensor, *rest):
    """fn(x, *rest) with x and the per-point tensors of rest padded to a multiple of BUCKET
    rows (copies of the first row), and the outputs cut back to x's rows."""
    n = x.shape[0]
    pad = -n % BUCKET

    def grow(v):
        if not torch.is_tensor(v) or v.ndim == 0 or v.shape[0] != n or pad == 0:
            return v
        return torch.cat([v, v[:1].expand(pad, *v.shape[1:])])

    out = fn(grow(x), *(grow(v) for v in rest))
    return tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n]


class CompiledCanonical:
    """A canonical field's forward compiled: `(x) -> (density, albedo)` and `density(x)`."""

    def __init__(self, module):
        self.original = module
        self.module = torch.compile(module, dynamic=False)

    def __call__(self, x, group: int = 1):
        """(`group` is only a hint to the kernels; padding would break its layout.)"""
        return padded(self.module, x)

    def density(self, x):
        return self(x)[0]

    def parameters(self):
        return self.original.parameters()


class CompiledMotion:
    """A motion field's displacement compiled; `warp` and `displacement` as on the module."""

    def __init__(self, module):
        self.original = module
        self.module = torch.compile(module, dynamic=False)

    def warp(self, x, t):
        return x + self.displacement(x, t)

    def displacement(self, x, t):
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), float(t), device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        return padded(self.module, x, t)


def compiled_fields(canonical, motion):
    """Compiled stand-ins for the renderer (motion may be None)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return CompiledCanonical(canonical), (None if motion is None else CompiledMotion(motion))
