"""The stages bench's prior clock: what it reports as inside the priors is what was there;
and its projection of a whole stage from the timed steps.

The clock's marks come from a fake clock that the test advances, so nothing here is timed."""

import pytest
import torch
from torch import nn

from benchmarks.stages import _PriorClock, projection

NOW = [0.0]  # the fake clock: seconds


class _Costly(torch.autograd.Function):
    """Identity whose forward "takes" 1 s and whose backward 2 s on the fake clock."""

    @staticmethod
    def forward(ctx, x):
        NOW[0] += 1.0
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        NOW[0] += 2.0
        return g


class Encoder(nn.Module):
    def forward(self, x, scale=None):
        return {"latent": _Costly.apply(x) * (1.0 if scale is None else scale)}


def fake_clock(device="cpu") -> _PriorClock:
    clock = _PriorClock(torch.device(device))
    clock._mark = lambda: NOW[0]
    return clock


def test_clock_times_the_backward_from_the_output_gradient_to_the_inputs():
    clock = fake_clock()
    enc = Encoder()
    clock.hook(enc)
    x = torch.ones(4, requires_grad=True)
    y = (x * 2).exp()  # a non-leaf input, as a render is
    out = enc(y, scale=torch.tensor(3.0, requires_grad=True))["latent"]
    after = out.sum() * 2
    NOW[0] += 10.0  # outside the prior: neither share counts it
    after.backward()
    assert clock.totals() == (1.0, 2.0)
    assert torch.allclose(x.grad, 2 * 3.0 * 2 * y.detach())


def test_clock_counts_no_backward_for_a_prior_run_without_gradients():
    """SDS's UNets run under no_grad: their forward counts, no backward is waited for."""
    clock = fake_clock()
    enc = Encoder()
    clock.hook(enc)
    x = torch.ones(4, requires_grad=True)
    with torch.no_grad():
        enc(x)
    (x * 2).sum().backward()
    assert clock.totals() == (1.0, 0.0)
    clock.remove()
    clock.reset()
    enc(x)
    assert clock.totals() == (0.0, 0.0)  # unhooked: the second call is not counted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the clock's events)")
def test_clock_on_cuda_records_one_forward_and_one_backward_span():
    clock = _PriorClock(torch.device("cuda"))
    enc = Encoder()
    clock.hook(enc)
    x = torch.ones(4, device="cuda", requires_grad=True)
    enc(x * 2)["latent"].sum().backward()
    torch.cuda.synchronize()
    assert [kind for kind, _, _ in clock._spans] == ["forward", "backward"]
    assert all(t >= 0.0 for t in clock.totals())


def test_projection_counts_the_work_between_steps_as_elsewhere():
    """A stage of 100 steps at 10 ms (half inside the priors' forward passes, a fifth in
    their backward) with 100 ms of occupancy refreshes and checkpoints between them and 1 s
    of set-up: 2.1 s in all, and the priors' shares are of all of it."""
    kinds = {"sds": {"ms_per_step": 10.0, "prior_forward_share": 0.5,
                     "prior_backward_share": 0.2}}
    minutes, shares = projection(kinds, {"sds": 100}, periodic_ms=100.0, setup_s=1.0)
    assert minutes == pytest.approx(2.1 / 60)
    assert shares["prior_forward_share"] == pytest.approx(500 / 2100)
    assert shares["prior_backward_share"] == pytest.approx(200 / 2100)
