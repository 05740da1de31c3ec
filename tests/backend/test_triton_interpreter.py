"""The Triton kernels (hash grid, fused MLP) on the CPU, under Triton's interpreter, against
the PyTorch paths: the kernels' arithmetic is checked without a GPU wherever Triton is
installed (CPU builds of torch ship without it; `scripts/setup.sh --test` adds it on Linux
x86_64, so CI runs these; the CUDA tests cover the GPU)."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs Triton (its interpreter runs the kernels on "
                                       "the CPU)")

GRID_SCRIPT = r"""
import torch
from animate4d.backend.field import hashgrid_triton
from animate4d.backend.field.hashgrid import PRIMES, HashGrid
from animate4d.backend.field.mlp import MLP
from animate4d.backend.field.mlp_triton import FusedMLP

torch.manual_seed(0)
for dims in (3, 4):
    grid = HashGrid(dims=dims, backend="torch", levels=4, log2_table=8, base_resolution=2,
                    finest_resolution=16)  # dense and hashed levels
    with torch.no_grad():
        grid.embeddings.normal_()
    # The dense levels' table gradients go through replicas (two programs per level here,
    # so two copies are summed), as the real grids' coarse levels do.
    sizes = tuple(int(v) for v in grid.sizes)
    assert hashgrid_triton.replicated_levels(sizes, grid.n_dense)[0] == grid.n_dense > 0
    fn = hashgrid_triton.interpolate_function(grid.n_dense, grid.hash_mask, PRIMES[:dims],
                                              sizes)
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
        assert got[0].transpose(0, 1).is_contiguous()  # stored level-major

    # Grid and MLP chained as the fields run them: the MLP reads the level-major features
    # where they lie and hands back a level-major gradient, which the grid reads as it is.
    net = MLP(grid.output_dim, 16, 3, layers=2)
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    up = torch.randn(len(x), 3)
    got, want = [], []
    for kernels, out in ((True, got), (False, want)):
        xi = x.clone().requires_grad_(True)
        e = grid.embeddings.detach().clone().requires_grad_(True)
        net.zero_grad()
        if kernels:
            feats = fn.apply(xi, e, grid.resolution, grid.strides, grid.offsets, 4)
            y = FusedMLP.apply(feats, lin[0].weight, lin[0].bias, None, None, lin[1].weight,
                               lin[1].bias)
        else:
            y = net(grid._interpolate.apply(xi, e, grid.resolution, grid.strides,
                                            grid.primes, grid.offsets))
        (y * up).sum().backward()
        out += [y.detach(), xi.grad, e.grad] + [p.grad.clone() for p in net.parameters()]
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (dims, "chain", i,
                                                            float((a - b).abs().max()))
print("kernels match")
"""


MLP_SCRIPT = r"""
import torch
from animate4d.backend.field.mlp import MLP
from animate4d.backend.field.mlp_triton import FusedMLP

torch.manual_seed(0)
# The fields' shapes (canonical 3 layers to 4, motion 2 to 3, looping 2 to 24), one with
# sides that are not powers of two, row counts that do not fill the last block, and none.
for layers, k, h, o, n in ((3, 32, 64, 4, 203), (2, 32, 64, 3, 64), (2, 32, 64, 24, 130),
                           (3, 20, 48, 5, 77), (3, 32, 64, 4, 0)):
    net = MLP(k, h, o, layers)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    scale = torch.rand(k)
    x = torch.randn(n, k)
    if n % 2:  # (n, L, 2) per-level features stored level-major, as the hash grid's
        x = x.reshape(n, k // 2, 2).transpose(0, 1).contiguous().transpose(0, 1)
    up = torch.randn(n, o)
    got, want = [], []
    for fused, out in ((True, got), (False, want)):
        xi = x.clone().requires_grad_(True)
        assert xi.stride() == x.stride()
        net.zero_grad()
        if fused:  # what MLP.forward runs on CUDA
            lin = [m for m in net if isinstance(m, torch.nn.Linear)]
            mid = lin[1:-1]
            y = FusedMLP.apply(xi, lin[0].weight * scale[None, :], lin[0].bias,
                               mid[0].weight if mid else None, mid[0].bias if mid else None,
                               lin[-1].weight, lin[-1].bias)
        else:
            y = net(xi, scale=scale)
        (y * up).sum().backward()
        out += [y.detach(), xi.grad] + [p.grad.clone() for p in net.parameters()]
    if n:
        assert got[1].stride() == x.stride()  # d/dx in x's layout
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (layers, k, h, o, n, i)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (layers, k, h, o, n, i,
                                                            float((a - b).abs().max()))
        if n:
            assert a.abs().max() > 0, (layers, k, h, o, n, i)
print("kernels match")
"""


def _interpret(script: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "kernels match" in r.stdout, r.stdout + r.stderr


def test_hashgrid_kernels_under_the_interpreter_match_the_pytorch_path():
    _interpret(GRID_SCRIPT)


def test_fused_mlp_kernels_under_the_interpreter_match_the_pytorch_path():
    """Values, d/dx and every weight's and bias's gradient, with a level window folded into
    the first layer (as the motion fields call it)."""
    _interpret(MLP_SCRIPT)
