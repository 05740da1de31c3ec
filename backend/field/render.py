"""Volume rendering of the (canonical + motion) field through Blender-convention cameras.

Rays go through pixel centres of `protocol.Camera`s (the same convention as everything else),
clipped to the box [-bound, bound]^3; samples are stratified between the entry and exit; an
optional occupancy grid (max over time) skips empty space; colours are albedo shaded by a
Lambertian light as in Animate124, normals from central differences of the canonical density
(no double backward through the encoder). Returns rgb, alpha, depth and normals per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from animate4d.protocol import Camera


class CameraBatch:
    """Several `protocol.Camera`s as tensors, so rays through any (camera, pixel) pairs,
    sub-pixel positions included, are made on the device in one call (the same pinhole
    model as `Camera.pixel_rays`)."""

    def __init__(self, cameras: list[Camera], device=None):
        f32 = dict(dtype=torch.float32, device=device)
        self.cameras = list(cameras)
        self.location = torch.tensor(np.stack([c.location for c in cameras]), **f32)
        self.rotation = torch.tensor(np.stack([c.rotation for c in cameras]), **f32)
        self.focal = torch.tensor([c.focal_px for c in cameras], **f32)
        self.centre = torch.tensor([c.principal_point for c in cameras], **f32)

    def rays(self, index: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions for cameras `index` (n,) at pixel coordinates uv (n, 2)."""
        f = self.focal[index][:, None]
        xy = (uv - self.centre[index]) / f
        d = torch.stack([xy[:, 0], -xy[:, 1], -torch.ones_like(xy[:, 0])], -1)
        d = torch.nn.functional.normalize(d, dim=-1)
        return self.location[index], torch.einsum("nij,nj->ni", self.rotation[index], d)


def camera_rays(camera: Camera, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (H*W, 3) through every pixel centre, row by row."""
    w, h = camera.resolution
    u, v = torch.meshgrid(torch.arange(w, device=device) + 0.5,
                          torch.arange(h, device=device) + 0.5, indexing="xy")
    uv = torch.stack([u, v], -1).reshape(-1, 2).float()
    return CameraBatch([camera], device).rays(torch.zeros(len(uv), dtype=torch.long,
                                                          device=device), uv)


def box_intersect(o, d, bound: float):
    """Entry and exit distances of rays with the box; rays that miss get near >= far."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (-bound - o) * inv, (bound - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def step_length(bound: float, samples: int) -> float:
    return 2 * bound * 3**0.5 / samples


def half_opaque_density(step: float) -> float:
    """The density whose one render step is half opaque (sigma * step = ln 2): the surface
    threshold for mesh extraction."""
    return math.log(2.0) / step


class OccupancyGrid:
    """Which cells of the box may hold density at any time (max over the given times)."""

    def __init__(self, bound: float, resolution: int = 64, device=None):
        self.bound, self.res = bound, resolution
        self.mask = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, density_fn, times=(None,), threshold: float = 0.01) -> float:
        r, b = self.res, self.bound
        axis = (torch.arange(r, device=self.mask.device) + 0.5) / r * 2 * b - b
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        occ = torch.zeros(len(pts), dtype=torch.bool, device=pts.device)
        for t in times:
            for i in range(0, len(pts), 2**18):
                occ[i : i + 2**18] |= density_fn(pts[i : i + 2**18], t) > threshold
        occ = occ.reshape((r,) * 3).float()[None, None]
        dilated = torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
        self.mask = dilated
        return float(dilated.float().mean())

    def query(self, x: torch.Tensor) -> torch.Tensor:
        idx = ((x + self.bound) / (2 * self.bound) * self.res).long().clamp(0, self.res - 1)
        return self.mask[idx[:, 0], idx[:, 1], idx[:, 2]]


@dataclass
class Shading:
    light: torch.Tensor | None = None  # unit direction towards the light, object frame
    ambient: float = 0.1
    mode: str = "lambertian"  # or "albedo"


class Renderer:
    def __init__(self, canonical, motion=None, *, bound: float = 1.0, samples: int = 64,
                 occupancy: OccupancyGrid | None = None, normal_eps: float = 1e-3,
                 point_chunk: int = 2**21):
        self.canonical, self.motion = canonical, motion
        # Fields see at most this many points per call: the grids' transient gathers scale
        # with it (about 1 KB per 4D point), whatever the batch of rays.
        self.point_chunk = point_chunk
        self.bound, self.samples, self.occupancy = bound, samples, occupancy
        self.normal_eps = normal_eps

    @property
    def step_length(self) -> float:
        """The longest ray step: the box's diagonal over the samples per ray. The occupancy
        and extraction thresholds are stated per step of this length."""
        return step_length(self.bound, self.samples)

    def density_at(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Density seen at points x at time t (for the occupancy grid)."""
        if self.motion is not None and t is not None:
            x = self.motion.warp(x, t)
        return self.canonical.density(x)

    def _shade_points(self, x: torch.Tensor, t, with_normals: bool) -> tuple:
        """Density, albedo (and normals) at world points x at time(s) t."""
        xc = x
        if self.motion is not None and t is not None:
            xc = self.motion.warp(x, t)
        dens, alb = self.canonical(xc)
        return dens, alb, (self._normals(xc) if with_normals else None)

    def _normals(self, xc: torch.Tensor) -> torch.Tensor:
        e = self.normal_eps
        offs = torch.eye(3, device=xc.device) * e
        grad = torch.stack([self.canonical.density(xc + offs[i]) -
                            self.canonical.density(xc - offs[i]) for i in range(3)], -1)
        return -torch.nn.functional.normalize(grad, dim=-1)

    def render_rays(self, o, d, t=None, *, shading: Shading | None = None,
                    background=(1.0, 1.0, 1.0), jitter: bool = False) -> dict:
        """Render rays at time t: None (canonical), a number, or one time per ray (n,).
        `background` is one colour or one per ray (n, 3)."""
        shading = shading or Shading()
        n_rays, s = len(o), self.samples
        near, far = box_intersect(o, d, self.bound)
        hit = far > near
        steps = (torch.arange(s, device=o.device, dtype=o.dtype) + 0.5) / s
        if jitter:
            steps = steps + (torch.rand(n_rays, s, device=o.device) - 0.5) / s
        z = near[:, None] + (far - near).clamp(min=0)[:, None] * steps  # (R, S)
        delta = ((far - near).clamp(min=0) / s)[:, None].expand(n_rays, s)
        pts = (o[:, None] + d[:, None] * z[..., None]).reshape(-1, 3)
        live = hit[:, None].expand(n_rays, s).reshape(-1)
        if self.occupancy is not None:
            live = live & self.occupancy.query(pts)
        sigma = torch.zeros(len(pts), device=o.device)
        albedo = torch.zeros(len(pts), 3, device=o.device)
        normal = torch.zeros(len(pts), 3, device=o.device)
        if live.any():
            xl = pts[live]
            tl = t
            if torch.is_tensor(t) and t.ndim == 1:
                tl = t[:, None].expand(n_rays, s).reshape(-1)[live]
            with_normals = shading.mode in ("lambertian", "normals")
            parts = [self._shade_points(xl[i : i + self.point_chunk],
                                        tl[i : i + self.point_chunk]
                                        if torch.is_tensor(tl) and tl.ndim == 1 else tl,
                                        with_normals)
                     for i in range(0, len(xl), self.point_chunk)]
            where = (live.nonzero()[:, 0],)
            sigma = sigma.index_put(where, torch.cat([p[0] for p in parts]))
            albedo = albedo.index_put(where, torch.cat([p[1] for p in parts]))
            if with_normals:
                normal = normal.index_put(where, torch.cat([p[2] for p in parts]))
        sigma, albedo, normal = sigma.view(n_rays, s), albedo.view(n_rays, s, 3), \
            normal.view(n_rays, s, 3)
        alpha = 1.0 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10],
                                        1), 1)[:, :-1]
        weights = alpha * trans
        acc = weights.sum(1)
        if shading.mode == "lambertian":
            # Default: a headlight (each ray lit from its own camera).
            light = shading.light.to(normal) if shading.light is not None else -d[:, None, :]
            lam = (normal * light).sum(-1).clamp(min=0.0)
            colour = albedo * (shading.ambient + (1 - shading.ambient) * lam)[..., None]
        else:
            colour = albedo
        bg = torch.as_tensor(background, dtype=o.dtype, device=o.device)
        return {
            "rgb": (weights[..., None] * colour).sum(1) + (1.0 - acc)[:, None] * bg,
            "alpha": acc,
            "depth": (weights * z).sum(1) / acc.clamp(min=1e-6),
            "normal": (weights[..., None] * normal).sum(1),
        }

    def render(self, cameras: list[Camera], times: list | None = None, *, chunk: int = 2**16,
               **kw) -> dict:
        """One image per (camera, time), all rays of the batch rendered together in chunks
        (cameras of one size): each output is (B, H, W, ...)."""
        if len({c.resolution for c in cameras}) != 1:
            raise ValueError("render: all cameras of one batch must have the same resolution")
        device = next(self.canonical.parameters()).device
        w, h = cameras[0].resolution
        u, v = torch.meshgrid(torch.arange(w, device=device) + 0.5,
                              torch.arange(h, device=device) + 0.5, indexing="xy")
        uv = torch.stack([u, v], -1).reshape(-1, 2).float().repeat(len(cameras), 1)
        index = torch.arange(len(cameras), device=device).repeat_interleave(w * h)
        o, d = CameraBatch(cameras, device).rays(index, uv)
        t = None
        if times is not None:
            if len(times) != len(cameras):
                raise ValueError("render: give one time per camera")
            t = torch.tensor([0.0 if x is None else float(x) for x in times],
                             device=device).repeat_interleave(w * h)
        parts = [self.render_rays(o[i : i + chunk], d[i : i + chunk],
                                  None if t is None else t[i : i + chunk], **kw)
                 for i in range(0, len(o), chunk)]
        return {k: torch.cat([p[k] for p in parts]).reshape(len(cameras), h, w, -1).squeeze(-1)
                for k in parts[0]}
