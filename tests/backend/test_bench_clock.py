"""The stages bench's prior clock: what it reports as inside the priors is what was there."""

import time

import pytest
import torch
from torch import nn

from animate4d.backend.bench.stages import _PriorClock


class _Slow(torch.autograd.Function):
    """Identity that takes `seconds` in its forward and twice that in its backward."""

    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        time.sleep(seconds)
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        time.sleep(2 * ctx.seconds)
        return g, None


class SlowEncoder(nn.Module):
    def forward(self, x, scale=None):
        return {"latent": _Slow.apply(x, 0.05) * (1.0 if scale is None else scale)}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the clock's event path)"))]


@pytest.mark.parametrize("device", DEVICES)
def test_clock_times_the_backward_from_the_output_gradient_to_the_inputs(device):
    clock = _PriorClock(torch.device(device))
    enc = SlowEncoder()
    clock.hook(enc)
    x = torch.ones(4, requires_grad=True, device=device)
    y = (x * 2).exp()  # a non-leaf input, as a render is
    out = enc(y, scale=torch.tensor(3.0, requires_grad=True, device=device))["latent"]
    after = out.sum() * 2
    time.sleep(0.5)  # outside the prior: neither share counts it
    after.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    forward, backward = clock.totals()
    assert 0.05 <= forward < 0.4
    assert 0.1 <= backward < 0.45
    assert torch.allclose(x.grad, 2 * 3.0 * 2 * y.detach())


def test_clock_counts_no_backward_for_a_prior_run_without_gradients():
    """SDS's UNets run under no_grad: their forward counts, no backward is waited for."""
    clock = _PriorClock(torch.device("cpu"))
    enc = SlowEncoder()
    clock.hook(enc)
    x = torch.ones(4, requires_grad=True)
    with torch.no_grad():
        enc(x)
    (x * 2).sum().backward()
    forward, backward = clock.totals()
    assert forward >= 0.05 and backward == 0.0
    clock.remove()
    clock.reset()
    enc(x)
    assert clock.totals() == (0.0, 0.0)  # unhooked: the second call is not counted
