"""The field benchmarks' stand-in for a fitted object."""

import math

import torch

from animate4d.backend.field.fields import CanonicalField
from benchmarks.field import fit_solid_ball


def test_the_benchmarks_fitted_state_is_a_sharp_solid_ball():
    """The `render` and `stages` benchmarks' `--state fitted` stands for a fitted object: check
    that the field really becomes a solid ball of radius 0.5 with a sharp surface."""
    torch.manual_seed(0)
    f = CanonicalField(log2_table=14, levels=8, base_resolution=8, finest_resolution=128)
    fit_solid_ball(f, steps=200, points=4096)
    directions = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    with torch.no_grad():
        inner, outer = f.density(directions * 0.4), f.density(directions * 0.6)
    half_opaque = math.log(2) / (2 * math.sqrt(3) / 64)  # one 64-sample step
    assert float(inner.min()) > half_opaque and float(outer.max()) < 0.1 * half_opaque
