"""The Triton hash-grid kernels on the CPU, under Triton's interpreter, against the PyTorch
path: the kernels' arithmetic is checked without a GPU wherever Triton is installed (CPU
builds of torch ship without it, so CI skips this; the CUDA tests cover the GPU)."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs Triton (its interpreter runs the kernels on "
                                       "the CPU)")

SCRIPT = r"""
import torch
from animate4d.backend.field import hashgrid_triton
from animate4d.backend.field.hashgrid import PRIMES, HashGrid

torch.manual_seed(0)
for dims in (3, 4):
    grid = HashGrid(dims=dims, backend="torch", levels=4, log2_table=8, base_resolution=2,
                    finest_resolution=16)  # dense and hashed levels
    with torch.no_grad():
        grid.embeddings.normal_()
    fn = hashgrid_triton.interpolate_function(grid.n_dense, grid.hash_mask, PRIMES[:dims])
    base = torch.rand(40, dims)
    # Points on cell faces (the box's, where the renderer clamps warped points): their far
    # corners weigh 0, while their neighbours inside the same cell need those rows.
    base[0], base[1] = 0.0, 1.0
    # group 4: a point and three copies, as the renderer's normals stack them: in the same
    # cell, in another cell, and the same point
    x = torch.cat([base, base + 1e-3, base + 0.2, base]).clamp(0, 1)
    up = torch.randn(len(x), grid.levels, grid.features)
    for group in (1, 4):
        got, want = [], []
        for run, out in ((lambda xi, e: fn.apply(xi, e, grid.resolution, grid.strides,
                                                 grid.offsets, group), got),
                         (lambda xi, e: grid._interpolate.apply(
                             xi, e, grid.resolution, grid.strides, grid.primes,
                             grid.offsets), want)):
            xi = x.clone().requires_grad_(True)
            e = grid.embeddings.detach().clone().requires_grad_(True)
            y = run(xi, e)
            (y * up).sum().backward()
            out += [y.detach(), xi.grad, e.grad]
        for name, a, b in zip(("values", "d/dx", "d/dtable"), got, want):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (dims, group, name,
                                                                float((a - b).abs().max()))
print("kernels match")
"""


def test_kernels_under_the_interpreter_match_the_pytorch_path():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "kernels match" in r.stdout, r.stdout + r.stderr
