"""The Triton hash grid against the PyTorch one (GPU only; skipped without CUDA and Triton)."""

import pytest
import torch

from animate4d.backend.field import hashgrid_triton
from animate4d.backend.field.hashgrid import HashGrid

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or hashgrid_triton.triton is None,
    reason="needs CUDA and Triton")


def assert_equal_up_to_position_rounding(b, a):
    """Equal up to float32 rounding of the position: at resolution 2048 one ulp of x * N is
    2.4e-4 of a cell, so a handful of values may differ by about that much."""
    scale, err = float(a.abs().max()), (b - a).abs()
    assert float(err.max()) <= 2e-3 * scale, (float(err.max()), scale)
    assert float(err.mean()) <= 1e-5 * scale, (float(err.mean()), scale)


@pytest.mark.parametrize("dims", [3, 4])
@pytest.mark.parametrize("layout", [
    dict(levels=4, log2_table=8, base_resolution=2, finest_resolution=16),  # dense + hashed
    dict(levels=16, log2_table=19, base_resolution=16, finest_resolution=2048),  # the pipeline's
])
def test_kernels_match_the_pytorch_path_values_and_both_gradients(dims, layout):
    torch.manual_seed(0)
    ref = HashGrid(dims=dims, backend="torch", **layout).cuda()
    fast = HashGrid(dims=dims, backend="triton", **layout).cuda()
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.embeddings.copy_(ref.embeddings)
    x = torch.rand(5000, dims, device="cuda")
    x[0], x[1] = 0.0, 1.0  # the boundaries
    upstream = torch.randn(5000, ref.levels, ref.features, device="cuda")
    outs = []
    for grid in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y = grid(xi)
        (y * upstream).sum().backward()
        outs.append((y.detach(), xi.grad, grid.embeddings.grad))
    for a, b in zip(*outs, strict=True):
        assert_equal_up_to_position_rounding(b, a)
    assert outs[1][2].abs().sum() > 0 and outs[1][1].abs().sum() > 0


def test_points_on_cell_faces_skip_nothing_they_need():
    """At t = 0 (how the motion field anchors frame 0) half the corners weigh 0 and are not
    read; values and the spatial gradient still match the PyTorch path."""
    torch.manual_seed(0)
    ref = HashGrid(dims=4, backend="torch").cuda()
    fast = HashGrid(dims=4, backend="triton").cuda()
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.embeddings.copy_(ref.embeddings)
    x = torch.rand(4000, 4, device="cuda")
    x[:, 3] = 0.0
    grads = []
    for grid in (ref, fast):
        xi = x.clone().requires_grad_(True)
        grid(xi).square().sum().backward()
        grads.append(xi.grad[:, :3])
    assert_equal_up_to_position_rounding(fast(x).detach(), ref(x).detach())
    assert_equal_up_to_position_rounding(grads[1], grads[0])


def test_compiled_module_with_kernels_matches_eager():
    torch.manual_seed(0)
    grid = HashGrid(dims=4, backend="triton").cuda()
    x = torch.rand(3000, 4, device="cuda")
    torch.testing.assert_close(torch.compile(grid)(x), grid(x))


@pytest.mark.parametrize("dims", [3, 4])
def test_grouped_copies_give_the_same_values_and_gradients(dims):
    """`group=4` (a point and its three finite-difference neighbours, as the renderer's
    normals stack them) merges the copies' table updates: the same numbers as the PyTorch
    path, including copies in other cells than their first (the finest levels), a point on
    its cells' faces (the box's corner), and rows that do not divide into groups (then no
    grouping)."""
    torch.manual_seed(0)
    ref = HashGrid(dims=dims, backend="torch").cuda()
    fast = HashGrid(dims=dims, backend="triton").cuda()
    with torch.no_grad():
        ref.embeddings.normal_()
        fast.embeddings.copy_(ref.embeddings)
    base = torch.rand(3000, dims, device="cuda") * 0.99
    base[0] = 0.0  # on a face of every level's cell: its neighbours inside still need rows
    eye = torch.eye(dims, device="cuda")[:3]
    for x in (torch.cat([base] + [base + 5e-4 * e for e in eye]), base[:2999]):
        upstream = torch.randn(len(x), ref.levels, ref.features, device="cuda")
        outs = []
        for grid, group in ((ref, 1), (fast, 4)):
            grid.embeddings.grad = None
            xi = x.clone().requires_grad_(True)
            y = grid(xi, group)
            (y * upstream).sum().backward()
            outs.append((y.detach(), xi.grad, grid.embeddings.grad))
        for a, b in zip(*outs, strict=True):
            assert_equal_up_to_position_rounding(b, a)
