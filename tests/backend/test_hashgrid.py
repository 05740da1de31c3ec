"""The hash grid against a direct, loop-by-loop d-linear interpolation on tiny grids."""

import itertools
import math

import pytest
import torch

from animate4d.backend.field.hashgrid import PRIMES, HashGrid


def reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Per point, per level, per corner, with plain Python integers."""
    out = torch.zeros(x.shape[0], grid.levels, grid.features, dtype=torch.float64)
    emb = grid.embeddings.detach().double()
    for p in range(x.shape[0]):
        for lvl in range(grid.levels):
            n = int(grid.resolution[lvl])
            size = int(grid.sizes[lvl])
            pos = [float(v) * n for v in x[p]]
            base = [math.floor(v) for v in pos]
            for corner in itertools.product((0, 1), repeat=grid.dims):
                c = [b + o for b, o in zip(base, corner, strict=True)]
                w = 1.0
                for i, o in enumerate(corner):
                    f = pos[i] - base[i]
                    w *= f if o else 1.0 - f
                if bool(grid.dense[lvl]):
                    idx = sum(ci * (n + 1) ** i for i, ci in enumerate(c))
                else:
                    h = 0
                    for i, ci in enumerate(c):
                        h ^= ci * PRIMES[i]
                    idx = h % size
                out[p, lvl] += w * emb[int(grid.offsets[lvl]) + idx]
    return out


@pytest.mark.parametrize("dims", [3, 4])
def test_matches_direct_interpolation_dense_and_hashed_levels(dims):
    torch.manual_seed(0)
    grid = HashGrid(dims=dims, levels=4, features=2, log2_table=8, base_resolution=2,
                    finest_resolution=16)
    assert bool(grid.dense[0]) and not bool(grid.dense[-1])  # both kinds of level are tested
    with torch.no_grad():
        grid.embeddings.normal_()
    x = torch.rand(40, dims)
    x[0] = 0.0
    x[1] = 1.0  # the boundaries
    torch.testing.assert_close(grid(x).double(), reference(grid, x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_exactly_the_corner_entries():
    grid = HashGrid(dims=3, levels=1, features=1, log2_table=12, base_resolution=4,
                    finest_resolution=4)
    x = torch.tensor([[0.3, 0.6, 0.1]])
    grid(x).sum().backward()
    g = grid.embeddings.grad[:, 0]
    assert int((g != 0).sum()) == 8
    torch.testing.assert_close(g.sum(), torch.tensor(1.0))  # d-linear weights sum to one


def test_default_configuration_is_the_designs():
    grid = HashGrid(dims=4)
    assert grid.output_dim == 32
    assert int(grid.resolution[0]) == 16 and int(grid.resolution[-1]) == 2048
    assert int(grid.sizes.max()) == 2**19
    assert grid.embeddings.abs().max() <= 1e-4


def test_interpolation_is_continuous_across_cell_faces():
    torch.manual_seed(1)
    grid = HashGrid(dims=3, levels=3, features=2, log2_table=10, base_resolution=4,
                    finest_resolution=16)
    with torch.no_grad():
        grid.embeddings.normal_()
    x = torch.tensor([[0.5, 0.3, 0.7]])
    eps = torch.tensor([[1e-6, 0.0, 0.0]])
    torch.testing.assert_close(grid(x - eps), grid(x + eps), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", [3, 4])
def test_hand_written_backward_matches_numerical_gradients(dims):
    """d/dx (the motion field's warp needs it) and d/dtable, against finite differences."""
    torch.manual_seed(2)
    grid = HashGrid(dims=dims, levels=3, features=2, log2_table=8, base_resolution=2,
                    finest_resolution=9).double()
    with torch.no_grad():
        grid.embeddings.normal_()
    # Points away from cell faces, where the interpolation is smooth.
    x = (torch.rand(6, dims, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, e: grid(x) * 1.0, (x, grid.embeddings),
                                     eps=1e-6, atol=1e-5)
