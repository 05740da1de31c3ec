"""The field stages' optimiser and its step (shared by the pipeline, the reference step's CUDA
graph and the benchmarks)."""

from __future__ import annotations

import torch

from .config import Animate124Config


def stage_optimiser(scene, stage: str, preset: Animate124Config) -> torch.optim.Adam:
    """The Adam optimiser of a field stage: which fields it trains, at which rates."""
    if stage == "dynamic":
        groups = [{"params": scene.motion.parameters(),
                   "lr": preset.optim.lr * preset.dynamic.motion_lr_scale}]
        if preset.dynamic.canonical_lr_scale > 0:
            groups.append({"params": scene.canonical.parameters(),
                           "lr": preset.optim.lr * preset.dynamic.canonical_lr_scale})
    else:
        groups = [{"params": scene.canonical.encoder.parameters(), "lr": preset.optim.lr},
                  {"params": scene.canonical.net.parameters(), "lr": preset.optim.lr * 0.1}]
        if stage == "refine":
            groups.append({"params": scene.motion.parameters(), "lr": preset.optim.lr * 0.1})
    # fused: one kernel for all parameters instead of a dozen launches per group; the step
    # after a reference step's small render waits on the host that launches them.
    # capturable (CUDA): its step count stays on the GPU, so the reference step can run as
    # a CUDA graph (`reference_graph`); the learning rates are then fixed at capture.
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=True,
                            capturable=scene.device.type == "cuda")


def give_gradients(opt: torch.optim.Optimizer) -> None:
    """Give every parameter of `opt` a gradient, zeros where it has none (what an untouched
    parameter is given anyway): Adam steps only parameters that have one."""
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def optimise(opt: torch.optim.Optimizer, losses: dict, clip: float | None) -> None:
    """One optimiser step on the sum of a step's losses, gradient values clipped at `clip`.

    Gradients are zeroed, not dropped: a parameter the step's losses do not reach (the motion
    field in a reference step, whose time-0 render skips it) still takes its Adam step on a
    zero gradient, as it would if the step had reached it with one, instead of standing still
    while its moments wait. A step whose render met no field at all (every ray in empty
    space: no gradient anywhere) is such a step for every parameter."""
    opt.zero_grad(set_to_none=False)
    total = sum(losses.values())
    if total.requires_grad:
        total.backward()
    # Zeros for what the losses did not reach: a view of empty space reaches nothing, and a
    # reference step with the canonical field out of the optimiser (mesh mode, or
    # `dynamic.canonical_lr_scale = 0`) reaches only parameters the optimiser does not hold.
    give_gradients(opt)
    if clip is not None:
        torch.nn.utils.clip_grad_value_([p for g in opt.param_groups for p in g["params"]],
                                        clip)
    opt.step()
