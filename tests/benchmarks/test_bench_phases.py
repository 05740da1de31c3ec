"""The `stages` benchmark's `--phases`: the parts of a step timed between syncs, and everything it
wrapped put back afterwards, also when the step fails."""

import pytest
import torch

from animate4d.backend.pipeline import stages
from animate4d.backend.priors import guidance
from benchmarks.phases import time_phases


def test_phases_time_each_wrapped_part_and_put_everything_back():
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w])  # (torch hooks Adam.step on the first Adam made)
    originals = (vars(stages.Scene)["render"], guidance.encode_images, torch.autograd.backward,
                 vars(torch.optim.Adam)["step"])

    def step(progress, reference=False):
        for _ in range(1 if reference else 2):
            (w * 2).sum().backward()
        opt.step()

    got = time_phases("static", step, torch.device("cpu"), iters=3)
    assert got["sds"]["backward"]["calls_per_step"] == 2
    assert got["reference"]["backward"]["calls_per_step"] == 1
    assert got["sds"]["optimiser_step"]["calls_per_step"] == 1
    assert set(got["sds"]) == {"backward", "optimiser_step"}  # no render, no prior called
    assert float(w.grad[0]) == 2.0 * 9  # the 9 wrapped backward calls did their work
    assert (vars(stages.Scene)["render"], guidance.encode_images, torch.autograd.backward,
            vars(torch.optim.Adam)["step"]) == originals

    def failing(progress, reference=False):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        time_phases("static", failing, torch.device("cpu"), iters=1)
    assert torch.autograd.backward is originals[2]
