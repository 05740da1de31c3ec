"""Reconstruction fitting: canonical + motion fields from multi-view, multi-time RGBA images.

This is the synthetic benchmark's optimiser and the first stage of mesh mode. Every step draws
rays from a few frames (all views of those frames, sub-pixel jitter, so pixel-averaged images
are matched in expectation), composites both the render and the image over one random
background colour (so transparency cannot hide behind a fixed background), and minimises

    |rgb - rgb*|^2 + w_mask |alpha - alpha*|^2                                  (data)
  + w_rigid   |J^T J - I|^2  of the warp's Jacobian J near the surface           (ARAP-like)
  + w_accel   |D(x, t+h) - 2 D(x, t) + D(x, t-h)|^2, h = a quarter frame        (smooth in t)

The first `static_fraction` of the steps sees frame 0 only and leaves the motion field alone:
D(x, 0) = 0, so frame 0 alone fixes the canonical model (the static stage of the pipeline);
then all frames are fitted together. An occupancy grid (max over the frames) is refreshed
every `occupancy_every` steps and skips empty space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from animate4d.protocol import Camera

from . import use_tensor_cores
from .fields import CanonicalField, MotionField, SpectralMotionField, warp_jacobian
from .render import CameraBatch, OccupancyGrid, Renderer, Shading


@dataclass
class MultiViewClip:
    """F frames seen by V fixed cameras: images (F, V, H, W, 4) uint8, straight alpha."""

    cameras: list[Camera]
    images: np.ndarray
    times: np.ndarray  # (F,) in [0, 1)

    def __post_init__(self):
        f, v, h, w, c = self.images.shape
        if c != 4 or self.images.dtype != np.uint8:
            raise ValueError("images must be (F, V, H, W, 4) uint8 RGBA")
        if v != len(self.cameras) or f != len(self.times):
            raise ValueError("one image per (frame, camera) is needed")
        if any(cam.resolution != (w, h) for cam in self.cameras):
            raise ValueError("every camera's resolution must match the images")


@dataclass
class FitConfig:
    steps: int = 3000
    static_fraction: float = 0.25
    rays: int = 4096
    frames_per_step: int = 4
    foreground_fraction: float = 0.5
    samples: int = 96
    bound: float = 1.0
    lr: float = 1e-2
    lr_motion: float = 1e-2
    coarse_to_fine: float = 0.5  # share of the dynamic steps over which motion levels open
    canonical_grid: dict = field(default_factory=lambda: dict(
        levels=16, features=2, log2_table=19, base_resolution=16, finest_resolution=2048))
    motion_grid: dict = field(default_factory=lambda: dict(
        levels=8, features=2, log2_table=19, base_resolution=4, finest_resolution=128))
    hidden: int = 64
    looping: bool = False
    motion_scale: float = 0.3
    w_mask: float = 1.0
    w_rigid: float = 1e-2
    w_accel: float = 1e-3
    # Distortion loss (Mip-NeRF 360): pulls each ray's weight into one short interval, so the
    # fitted surface is sharp and marching cubes' level sits where the renders put it.
    w_distortion: float = 0.1
    reg_points: int = 4096
    occupancy_resolution: int = 64
    occupancy_every: int = 16
    seed: int = 0


@dataclass
class FitResult:
    canonical: CanonicalField
    motion: torch.nn.Module
    renderer: Renderer
    history: list[dict]
    seconds: float


def build_fields(config: FitConfig, device) -> tuple[CanonicalField, torch.nn.Module]:
    canonical = CanonicalField(config.bound, hidden=config.hidden, blob_density=5.0,
                               blob_radius=0.5 * config.bound, **config.canonical_grid)
    motion_cls = SpectralMotionField if config.looping else MotionField
    motion = motion_cls(config.bound, hidden=config.hidden, scale=config.motion_scale,
                        **config.motion_grid)
    return canonical.to(device), motion.to(device)


def fit_shape(canonical: CanonicalField, inside: Callable[[torch.Tensor], torch.Tensor], *,
              near: torch.Tensor | None = None, colour=None, steps: int = 300,
              points: int = 2**16, log_density: tuple[float, float] = (5.0, -5.0),
              seed: int = 0) -> float:
    """Regress the canonical field onto a shape given as occupancy: log-density
    `log_density[0]` where inside(x) (in [0, 1]) is 1, `[1]` where it is 0; the albedo onto
    colour(x) (n, 3) in [0, 1] inside, when given. Half of each batch is uniform in the box,
    half jittered around `near` (surface points), where the edge is decided. Returns the last
    squared error of the log-density. Used to start the static stage from the preview proxy,
    and by the benchmarks for a fitted object's density."""
    device = next(canonical.parameters()).device
    opt = torch.optim.Adam(canonical.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, hi, lo = canonical.bound, *log_density
    loss = torch.zeros(())
    for _ in range(steps):
        x = (torch.rand(points, 3, generator=gen) * 2 - 1) * b
        if near is not None and len(near):
            pick = near[torch.randint(0, len(near), (points // 2,), generator=gen)].cpu()
            x = torch.cat([x[: points - len(pick)],
                           pick + 0.02 * b * torch.randn(len(pick), 3, generator=gen)])
        x = x.clamp(-b, b).to(device)
        occ = inside(x).to(device)
        h = canonical.raw(x)
        loss = ((h[:, 0] + canonical.blob(x) - (lo + (hi - lo) * occ)) ** 2).mean()
        total = loss
        if colour is not None:
            err = ((torch.sigmoid(h[:, 1:]) - colour(x).to(device)) ** 2).sum(-1)
            total = total + (err * occ).sum() / occ.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    canonical.zero_grad(set_to_none=True)
    return float(loss.detach())


def rigidity_loss(motion, x, t, eps: float) -> torch.Tensor:
    j = warp_jacobian(motion, x, t, eps)
    jtj = j.transpose(1, 2) @ j
    return ((jtj - torch.eye(3, device=x.device)) ** 2).sum((1, 2)).mean()


def acceleration_loss(motion, x, t, h: float) -> torch.Tensor:
    d0 = motion.displacement(x, t - h)
    d1 = motion.displacement(x, t)
    d2 = motion.displacement(x, t + h)
    return ((d2 - 2 * d1 + d0) ** 2).sum(-1).mean()


def fit(clip: MultiViewClip, config: FitConfig | None = None, *, device=None,
        progress: Callable[[int, int, dict], None] | None = None) -> FitResult:
    """Fit the fields to the clip; `progress(step, steps, losses)` may raise to cancel."""
    config = config or FitConfig()
    device = torch.device(device or "cpu")
    use_tensor_cores(device)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    canonical, motion = build_fields(config, device)
    occupancy = OccupancyGrid(config.bound, config.occupancy_resolution, device=device)
    renderer = Renderer(canonical, motion, bound=config.bound, samples=config.samples,
                        occupancy=occupancy)
    opt = torch.optim.Adam([
        {"params": canonical.encoder.parameters(), "lr": config.lr},
        {"params": canonical.net.parameters(), "lr": config.lr * 0.1},
        {"params": motion.parameters(), "lr": config.lr_motion},
    ], betas=(0.9, 0.99), eps=1e-15)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 ** min(s / max(config.steps, 1), 1.0))

    images = torch.as_tensor(clip.images, device=device)  # uint8 (F, V, H, W, 4)
    n_frames, n_views, height, width, _ = images.shape
    cams = CameraBatch(clip.cameras, device)
    times = torch.as_tensor(clip.times, dtype=torch.float32, device=device)
    frame_gap = 1.0 / max(n_frames, 2)
    # Per frame, the (view, y, x) of every pixel the object touches: a share of each batch's
    # rays comes from these, so small objects are not starved of rays.
    alpha = torch.as_tensor(clip.images[..., 3] > 0)
    foreground = [alpha[f].nonzero() for f in range(n_frames)]
    static_steps = int(config.static_fraction * config.steps) if n_frames > 1 else config.steps
    shading = Shading(mode="albedo")
    history: list[dict] = []
    start = time.perf_counter()
    for step in range(config.steps):
        dynamic = step >= static_steps
        if dynamic:
            motion.open_levels((step - static_steps) / max(1, config.coarse_to_fine *
                                                          (config.steps - static_steps)))
        if step % config.occupancy_every == 0 and step >= 32:
            occ_times = [float(x) for x in times] if dynamic else [0.0]
            # Skip cells where one render step would be less than 1% opaque.
            occupancy.update(renderer.density_at, times=occ_times,
                             threshold=0.01 / (2 * config.bound * math.sqrt(3) / config.samples))
        n = config.rays
        if dynamic:
            k = min(config.frames_per_step, n_frames)
            frames = torch.randperm(n_frames, generator=gen)[:k]
        else:
            k, frames = 1, torch.zeros(1, dtype=torch.long)
        fi, vi, py, px = _draw_pixels(frames, n, config.foreground_fraction, foreground,
                                      (n_views, height, width), gen)
        jitter = torch.rand(n, 2, generator=gen)
        fi, vi, px, py = (a.to(device) for a in (fi, vi, px, py))
        uv = torch.stack([px, py], -1).float() + jitter.to(device)
        o, d = cams.rays(vi, uv)
        target = images[fi, vi, py, px].float() / 255.0
        bg = torch.rand(1, 3, generator=gen).to(device).expand(n, 3)
        t = times[fi] if dynamic else None
        out = renderer.render_rays(o, d, t, shading=shading, background=bg, jitter=True,
                                   distortion=config.w_distortion > 0)
        a_star = target[:, 3:]
        rgb_star = target[:, :3] * a_star + bg * (1 - a_star)
        loss_rgb = ((out["rgb"] - rgb_star) ** 2).mean()
        loss_mask = ((out["alpha"] - a_star[:, 0]) ** 2).mean()
        loss = loss_rgb + config.w_mask * loss_mask
        logs = {"rgb": loss_rgb.item(), "mask": loss_mask.item()}
        if config.w_distortion > 0:
            loss_dist = out["distortion"].mean()
            loss = loss + config.w_distortion * loss_dist
            logs["distortion"] = loss_dist.item()
        if dynamic:
            xr = _surface_points(occupancy, config.reg_points, gen, device)
            tr = times[torch.randint(0, n_frames, (len(xr),), generator=gen).to(device)]
            eps = 2 * config.bound / config.occupancy_resolution
            loss_rigid = rigidity_loss(motion, xr, tr, eps)
            loss_acc = acceleration_loss(motion, xr, tr, frame_gap / 4)
            loss = loss + config.w_rigid * loss_rigid + config.w_accel * loss_acc
            logs.update(rigid=loss_rigid.item(), accel=loss_acc.item())
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False only when no sample was in an occupied cell
            loss.backward()
        if not dynamic:
            motion.zero_grad(set_to_none=True)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == config.steps - 1:
            logs["psnr"] = -10 * math.log10(max(logs["rgb"], 1e-10))
            history.append({"step": step, **logs})
        if progress is not None:
            progress(step + 1, config.steps, logs)
    return FitResult(canonical, motion, renderer, history, time.perf_counter() - start)


def _draw_pixels(frames, n, fg_share, foreground, shape, gen):
    """n (frame, view, y, x) samples from the given frames: fg_share of them on the object."""
    n_views, height, width = shape
    k = len(frames)
    per_frame = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out = []
    for f, m in zip(frames.tolist(), per_frame, strict=True):
        n_fg = int(m * fg_share) if len(foreground[f]) else 0
        fg = foreground[f][torch.randint(0, len(foreground[f]), (n_fg,), generator=gen)] \
            if n_fg else torch.zeros(0, 3, dtype=torch.long)
        rest = torch.stack([torch.randint(0, n_views, (m - n_fg,), generator=gen),
                            torch.randint(0, height, (m - n_fg,), generator=gen),
                            torch.randint(0, width, (m - n_fg,), generator=gen)], 1)
        vyx = torch.cat([fg, rest])
        out.append(torch.cat([torch.full((m, 1), f, dtype=torch.long), vyx], 1))
    return torch.cat(out).unbind(1)


def _surface_points(occupancy: OccupancyGrid, n: int, gen, device) -> torch.Tensor:
    """Random points in occupied cells (where the regularisers matter)."""
    cells = occupancy.mask.nonzero()
    if len(cells) == 0:
        cells = torch.zeros(1, 3, dtype=torch.long, device=device) + occupancy.res // 2
    pick = cells[torch.randint(0, len(cells), (n,), generator=gen).to(cells.device)]
    size = 2 * occupancy.bound / occupancy.res
    jitter = torch.rand(n, 3, generator=gen).to(device)
    return (pick.float() + jitter) * size - occupancy.bound
