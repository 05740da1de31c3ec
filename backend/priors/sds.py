"""Score distillation, the part every prior shares.

SDS (DreamFusion): noise the render's latents to a random timestep t, let the prior predict the
noise with classifier-free guidance, and push the latents along w(t) (eps_hat - eps), with
w(t) = 1 - alpha_bar(t). The gradient is applied through a surrogate loss
0.5 * |latents - stopgrad(latents - grad)|^2, whose gradient w.r.t. the latents is exactly
`grad`; the loss value itself is only for logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..runtime.device_tensors import to_device


@dataclass(frozen=True)
class TimestepRange:
    """t drawn uniformly in [t_min, t_max] (fractions of the training steps). With `anneal`,
    t_max falls linearly to `anneal_to` as the stage progresses (coarse shape first)."""

    t_min: float = 0.02
    t_max: float = 0.98
    anneal_to: float | None = None

    def bounds(self, progress: float, steps: int) -> tuple[int, int]:
        hi = self.t_max
        if self.anneal_to is not None:
            hi = self.t_max + (self.anneal_to - self.t_max) * min(max(progress, 0.0), 1.0)
        lo_i = int(self.t_min * steps)
        hi_i = max(int(hi * steps), lo_i + 1)
        return lo_i, min(hi_i, steps - 1)

    def sample(self, n: int, progress: float, steps: int, device,
               generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.bounds(progress, steps)
        return torch.randint(lo, hi + 1, (n,), device=device, generator=generator)


def cfg_mix(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def add_noise(latents, noise, t, alphas_cumprod):
    ab = alphas_cumprod[t].to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return ab.sqrt() * latents + (1 - ab).sqrt() * noise


# predict(x_t, t) -> (eps_uncond, eps_cond)
Predictor = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SDSOutput:
    loss: torch.Tensor  # surrogate, differentiable w.r.t. the latents
    # A 0-dim tensor on the latents' device, for logging: reading it (float()) waits for the
    # GPU, so the step itself never does (it was a host sync in every SDS call).
    grad_norm: torch.Tensor
    t: torch.Tensor


def sds(latents: torch.Tensor, predict: Predictor, *, scale: float, alphas_cumprod: torch.Tensor,
        t: torch.Tensor, noise: torch.Tensor | None = None,
        weight: float | torch.Tensor = 1.0, target: str = "eps") -> SDSOutput:
    """One SDS step on latents (B, ...). `weight`: a number, or one per latent shaped to
    broadcast against them (B, 1, ...). `target="x0"`: the one-step-denoised latents are the
    target (ControlNet-tile refinement), loss 0.5 * |latents - x0_hat|^2."""
    alphas_cumprod = to_device(alphas_cumprod, latents.device)  # no host sync
    noise = torch.randn_like(latents) if noise is None else noise
    with torch.no_grad():
        x_t = add_noise(latents, noise, t, alphas_cumprod)
        uncond, cond = predict(x_t, t)
        eps = cfg_mix(uncond.float(), cond.float(), scale)
        ab = alphas_cumprod[t].float().view(-1, *([1] * (latents.ndim - 1)))
        if target == "x0":
            x0 = (x_t.float() - (1 - ab).sqrt() * eps) / ab.sqrt()
            grad = weight * (latents.float() - x0)
        else:
            grad = weight * (1 - ab) * (eps - noise.float())
        grad = torch.nan_to_num(grad)
    goal = (latents.float() - grad).detach()
    loss = 0.5 * ((latents.float() - goal) ** 2).sum() / latents.shape[0]
    return SDSOutput(loss, grad.norm(), t)


@dataclass(frozen=True)
class GuidanceConfig:
    """One prior's SDS settings."""

    scale: float
    """Classifier-free guidance scale."""
    timesteps: TimestepRange
    """Where the SDS timestep is drawn, as fractions of the scheduler's training steps."""
    size: int | None = None
    """The prior's input resolution in pixels (None: its VAE's sample size)."""
    weight: float = 1.0
    """The weight of its SDS loss (Zero123's only; the others' losses keep weight 1). For
    Zero123 it is the weight opposite the reference: a view's is this x its angle to the
    reference / 180."""


# Animate124's settings (the `paper` preset's, docs/ARCHITECTURE.md): the one place they live.
SD = GuidanceConfig(100.0, TimestepRange(0.2, 0.6))
ZERO123 = GuidanceConfig(5.0, TimestepRange(0.2, 0.6), size=256, weight=40.0)
VIDEO = GuidanceConfig(100.0, TimestepRange(0.02, 0.98), size=256)
TILE = GuidanceConfig(7.5, TimestepRange(0.2, 0.8), size=1024)
