"""The fields: canonical density + albedo, and motion (a backward warp in time).

Canonical: hash grid (3D) + small MLP -> density and albedo, with Animate124's activations
(truncated exp for density, sigmoid for albedo) and its density blob, a Gaussian bump at the
centre that gives the optimisation something to start from.

Motion: a backward warp. For a point x seen at time t in [0, 1], `warp(x, t)` is the canonical
point it shows: x + D(x, t), with D(x, 0) = 0 exactly, so frame 0 is the canonical (static)
model. Two forms:
  - `MotionField` (4D hash grid + MLP): D(x, t) = g(x, t) - g(x, 0) (the reconstruction fit's,
    which sees every frame of the clip);
  - `SpectralMotionField` (coarse 3D hash grid + MLP, K Fourier terms in t, after Generative
    Image Dynamics): D(x, t) = sum_k a_k(x) (cos(2 pi k t / P) - 1) + b_k(x) sin(2 pi k t / P).
    Period P = 1 loops exactly (D(x, 1) = D(x, 0) = 0); P = 2 is a free motion, the first half
    of a loop twice the clip's length (any smooth D with D(x, 0) = 0 on [0, 1] is such a half).
    The SDS stages use it: smooth in time by construction, and coarse in space, a motion has
    few parameters to spread a noisy gradient over (a 4D grid as fine as the canonical one
    learned noise on the oracle priors: docs/DECISIONS.md "The SDS stages' motion").

Points are in the object frame within [-bound, bound]^3.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .hashgrid import HashGrid
from .mlp import MLP


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (Instant-NGP / stable-dreamfusion's density activation)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class CanonicalField(nn.Module):
    def __init__(self, bound: float = 1.0, *, blob_density: float = 10.0,
                 blob_radius: float = 0.5, hidden: int = 64, **grid):
        super().__init__()
        self.bound = bound
        self.blob_density, self.blob_radius = blob_density, blob_radius
        self.encoder = HashGrid(dims=3, **grid)
        self.net = MLP(self.encoder.output_dim, hidden, 4, layers=3)
        # Coarse to fine (`open_levels`). Not saved: the static stage sets it at every step
        # from its schedule, and every later stage sees all levels.
        self.register_buffer("level_window", torch.ones(self.encoder.output_dim),
                             persistent=False)
        # All levels open: the MLP skips the window's product. The window only ever opens
        # within a stage, so a reference graph captured while it was closed stays right: it
        # keeps reading the buffer.
        self._all_open = True

    def open_levels(self, amount: float) -> None:
        """Features of levels beyond `amount` (0..1 of the levels) are masked, so the static
        stage finds the coarse shape before fine detail can take it over (Animate124's
        `grid_levels_mask`)."""
        set_level_window(self.level_window, self.encoder, amount)
        self._all_open = amount >= 1.0

    # The renderer calls these a dozen times a step, and on a GPU each PyTorch op costs the
    # host time while the render waits on it: written with as few ops as they take.
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return _to_unit_box(x, self.bound)

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.linalg.vecdot(x, x)
        return self.blob_density * torch.exp(d2 * (-0.5 / self.blob_radius**2))

    def forward(self, x: torch.Tensor, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3) points -> density (n,), albedo (n, 3). `group`: see `HashGrid.forward`."""
        h = self.raw(x, group)
        return self._density(h, x), torch.sigmoid(h[:, 1:])

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """The density alone (the renderer's first pass, occupancy): no albedo computed."""
        return self._density(self.raw(x), x)

    def raw(self, x: torch.Tensor, group: int = 1) -> torch.Tensor:
        """The MLP's outputs (n, 4) before the activations."""
        return self.net(self.encoder(self.normalise(x), group),
                        scale=None if self._all_open else self.level_window)

    def _density(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return trunc_exp(h[:, 0] + self.blob(x))


def _to_unit_box(x: torch.Tensor, bound: float) -> torch.Tensor:
    """[-bound, bound] -> [0, 1], in two ops (in place on a fresh tensor: autograd keeps
    nothing of a product by a number)."""
    return x.mul(0.5 / bound).add_(0.5)


def warp_jacobian(motion, x: torch.Tensor, t, eps: float) -> torch.Tensor:
    """(n, 3, 3) central-difference Jacobian of the warp x -> x + D(x, t) (rigidity
    regulariser, Newton inversion)."""
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    cols = [(motion.displacement(x + eps * eye[i], t) - motion.displacement(x - eps * eye[i], t))
            / (2 * eps) for i in range(3)]
    return torch.stack(cols, -1) + eye


def set_level_window(window: torch.Tensor, encoder: HashGrid, amount: float) -> None:
    """Level l gets weight clamp(amount * L - l, 0, 1) (the first level is always on)."""
    levels = torch.arange(encoder.levels, device=window.device, dtype=window.dtype)
    w = (amount * encoder.levels - levels).clamp(0.0, 1.0)
    w[0] = 1.0
    window.copy_(w.repeat_interleave(encoder.features))


class MotionField(nn.Module):
    """D(x, t) = g(x, t) - g(x, 0) from a 4D hash grid."""

    def __init__(self, bound: float = 1.0, hidden: int = 64, scale: float = 0.1, **grid):
        super().__init__()
        self.bound, self.scale = bound, scale
        self.encoder = HashGrid(dims=4, **grid)
        self.net = MLP(self.encoder.output_dim, hidden, 3, layers=2)
        self.register_buffer("level_window", torch.ones(self.encoder.output_dim))

    def open_levels(self, amount: float) -> None:
        """Coarse to fine: features of levels beyond `amount` (0..1 of the levels) are faded
        out, so large, smooth motions are found before fine ones (as in Nerfies)."""
        set_level_window(self.level_window, self.encoder, amount)

    def _g(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xt = torch.cat([_to_unit_box(x, self.bound), t.reshape(-1, 1).expand(len(x), 1)], 1)
        return self.scale * self.net(self.encoder(xt), scale=self.level_window)

    def displacement(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """g(x, t) - g(x, 0), both halves in one grid and one MLP call (half the launches;
        the kernels skip the t + 1 corners of the t = 0 half, whose weights are 0)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(len(x))
        both = self._g(torch.cat([x, x]), torch.cat([t, torch.zeros_like(t)]))
        return both[: len(x)] - both[len(x):]

    def warp(self, x: torch.Tensor, t) -> torch.Tensor:
        return x + self.displacement(x, t)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.displacement(x, t)


class SpectralMotionField(nn.Module):
    """K Fourier terms per point of period `period` in t (1: a loop; 2: a free motion), zero at
    t = 0."""

    def __init__(self, bound: float = 1.0, terms: int = 4, hidden: int = 64,
                 scale: float = 0.1, period: float = 1.0, **grid):
        super().__init__()
        if period not in (1.0, 2.0):
            raise ValueError("period must be 1 (a loop) or 2 (a free motion)")
        self.bound, self.terms, self.scale, self.period = bound, terms, scale, float(period)
        self.encoder = HashGrid(dims=3, **grid)
        self.net = MLP(self.encoder.output_dim, hidden, 6 * terms, layers=2)
        # No motion at the start: the stage begins from the static model as it is, not from
        # a displacement as long as the motion it must find (the MLP's random outputs).
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("level_window", torch.ones(self.encoder.output_dim))

    @property
    def loops(self) -> bool:
        return self.period == 1.0

    def open_levels(self, amount: float) -> None:
        set_level_window(self.level_window, self.encoder, amount)

    def displacement(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        coef = self.scale * self.net(self.encoder(_to_unit_box(x, self.bound)),
                                     scale=self.level_window)
        coef = coef.reshape(len(x), self.terms, 2, 3)
        k = torch.arange(1, self.terms + 1, device=x.device, dtype=x.dtype)
        phase = (2 * math.pi / self.period) * k * t  # (1 or n, K)
        cos_t = (torch.cos(phase) - 1.0).unsqueeze(-1)
        sin_t = torch.sin(phase).unsqueeze(-1)
        return (coef[:, :, 0] * cos_t + coef[:, :, 1] * sin_t).sum(1)

    def warp(self, x: torch.Tensor, t) -> torch.Tensor:
        return x + self.displacement(x, t)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.displacement(x, t)
