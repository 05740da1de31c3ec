"""The fused Triton MLP against the PyTorch path on the GPU (skipped without CUDA and Triton;
the interpreter test checks the kernels' arithmetic on the CPU)."""

import copy

import pytest
import torch

from animate4d.backend.field import mlp_triton
from animate4d.backend.field.fields import CanonicalField, MotionField
from animate4d.backend.field.mlp import MLP
from animate4d.backend.runtime import switches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or mlp_triton.triton is None,
                                reason="needs CUDA and Triton")


def _run(net, x, up, scale, fused: bool, monkeypatch):
    monkeypatch.setattr(switches, "_active", switches.Switches(fused_mlp=fused))
    assert net._fused(x) == fused
    net.zero_grad()
    xi = x.clone().requires_grad_(True)
    y = net(xi, scale=scale)
    (y * up).sum().backward()
    return [y.detach(), xi.grad] + [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("layers,out", [(3, 4), (2, 3), (2, 24)])
def test_fused_mlp_is_as_accurate_as_pytorch_values_and_every_gradient(layers, out,
                                                                      monkeypatch):
    """Both paths multiply in TF32 (as jobs run them), so both are compared with a float64
    reference: the fused one may be a few times less exact (its sums run in another order,
    Triton rounds to TF32 by truncation), not wrong (an error would be of order 1)."""
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    net = MLP(32, 64, out, layers).cuda()
    n = 300_001  # many blocks, the last one partial
    x = torch.randn(n, 32, device="cuda")
    up = torch.randn(n, out, device="cuda")
    scale = torch.rand(32, device="cuda")
    pytorch = _run(net, x, up, scale, False, monkeypatch)
    fused = _run(net, x, up, scale, True, monkeypatch)
    exact = _run(copy.deepcopy(net).double(), x.double(), up.double(), scale.double(), False,
                 monkeypatch)
    for i, (f, p, e) in enumerate(zip(fused, pytorch, exact, strict=True)):
        err_f = float((f.double() - e).norm() / e.norm())
        err_p = float((p.double() - e).norm() / e.norm())
        assert err_f <= 5 * err_p + 1e-4, (i, err_f, err_p)
        assert err_f < 0.05, (i, err_f)


def test_fields_give_the_same_density_and_motion_either_way(monkeypatch):
    """What the renderer sees: density, albedo and displacement, fused or not."""
    torch.manual_seed(0)
    canonical, motion = CanonicalField().cuda(), MotionField().cuda()
    x = torch.rand(20_000, 3, device="cuda") * 2 - 1
    t = torch.rand(20_000, device="cuda")
    outs = []
    for fused in (False, True):
        monkeypatch.setattr(switches, "_active", switches.Switches(fused_mlp=fused))
        with torch.no_grad():
            dens, alb = canonical(x)
            outs.append((dens, alb, motion.displacement(x, t)))
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-5), float((a - b).abs().max())
