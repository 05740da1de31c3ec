"""Volume rendering of the (canonical + motion) field through Blender-convention cameras.

Rays go through pixel centres of `protocol.Camera`s (the same convention as everything else),
clipped to the box [-bound, bound]^3; samples are stratified between the entry and exit; an
optional occupancy grid (max over time) skips empty space, and a no-grad first pass drops the
samples hidden behind opaque ones or too thin to show; colours are albedo shaded by a
Lambertian light as in Animate124, normals from finite differences of the density (no double
backward through the encoder; `Renderer(normals=...)` says which). Returns rgb, alpha, depth
and normals per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from animate4d.protocol import Camera

from ..runtime.device_tensors import to_device


class CameraBatch:
    """Several `protocol.Camera`s as tensors, so rays through any (camera, pixel) pairs,
    sub-pixel positions included, are made on the device in one call (the same pinhole
    model as `Camera.pixel_rays`)."""

    def __init__(self, cameras: list[Camera], device=None):
        self.cameras = list(cameras)
        # One copy to the device, and no host sync (`device_tensors`): the first thing every
        # render does, often while the GPU still runs the last step's work.
        packed = np.concatenate([
            np.stack([c.location for c in cameras]).reshape(len(cameras), 3),
            np.stack([c.rotation for c in cameras]).reshape(len(cameras), 9),
            np.array([[c.focal_px] for c in cameras]),
            np.stack([c.principal_point for c in cameras]).reshape(len(cameras), 2)], axis=1)
        packed = to_device(packed, device or "cpu")
        self.location, self.focal = packed[:, 0:3], packed[:, 12]
        self.rotation, self.centre = packed[:, 3:12].reshape(-1, 3, 3), packed[:, 13:15]

    def rays(self, index: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions for cameras `index` (n,) at pixel coordinates uv (n, 2)."""
        f = self.focal[index][:, None]
        xy = (uv - self.centre[index]) / f
        d = torch.stack([xy[:, 0], -xy[:, 1], -torch.ones_like(xy[:, 0])], -1)
        d = torch.nn.functional.normalize(d, dim=-1)
        return self.location[index], torch.einsum("nij,nj->ni", self.rotation[index], d)

    def project(self, index: torch.Tensor | int, x: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        """Pixel coordinates (n, 2) and depth in front of the camera (n,) of world points x
        in cameras `index` (one per point, or one camera for all), the inverse of `rays`, as
        `Camera.project`."""
        one = isinstance(index, int)
        rot, loc = self.rotation[index], self.location[index]
        f, c = self.focal[index], self.centre[index]
        if one:
            rot, loc, f, c = rot[None], loc[None], f[None], c[None]
        q = ((x - loc)[:, None, :] @ rot)[:, 0]  # camera frame: q_j = sum_i R_ij (x - o)_i
        depth = -q[:, 2]
        safe = torch.where(depth.abs() < 1e-12, torch.full_like(depth, 1e-12), depth)
        uv = torch.stack([c[:, 0] + f * q[:, 0] / safe, c[:, 1] - f * q[:, 1] / safe], -1)
        return uv, depth


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


def _sum_before(v: torch.Tensor, ray: torch.Tensor,
                start: torch.Tensor | None = None) -> torch.Tensor:
    """Per packed sample, the sum of v (n, ...) over the samples before it on its ray (`ray`
    holds each sample's ray, ascending), in float64: subtracting a ray's start from one
    running sum keeps full precision over millions of samples. `start`: `_run_start(ray)`,
    if the caller has it already."""
    v64 = v.double()
    # One scan per column: CUDA scans a 1-D tensor with CUB, but dim 0 of an (n, k) tensor
    # with a kernel parallel over the k columns only, which on millions of samples costs more
    # than the rest of a fitting step.
    run = (torch.cumsum(v64, 0) if v64.dim() == 1
           else torch.stack([torch.cumsum(c, 0) for c in v64.unbind(1)], 1))
    before = run - v64
    return before - before[_run_start(ray) if start is None else start]


def _run_start(ray: torch.Tensor) -> torch.Tensor:
    """Per packed sample, the position of its ray's first sample (`ray` ascending), found
    without a host sync: a binary search, not boolean indexing (nor cummax, whose CUDA scan
    with indices is slow on millions of samples)."""
    return torch.searchsorted(ray, ray)


def _packed_transmittance(tau: torch.Tensor, ray: torch.Tensor,
                          start: torch.Tensor | None = None) -> torch.Tensor:
    """Light reaching each packed sample: exp(-sum of tau = sigma * delta over the samples
    before it on its ray)."""
    if len(tau) == 0:
        return tau
    return torch.exp(-_sum_before(tau, ray, start)).to(tau.dtype)


def _packed_distortion(w: torch.Tensor, m: torch.Tensor, ray: torch.Tensor, width: float,
                       n_rays: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """Mip-NeRF 360's distortion loss per ray, sum_ij w_i w_j |m_i - m_j| + sum_i w_i^2 width
    / 3, with m the samples' positions along the ray in [0, 1] (ascending per ray): small when
    a ray's weight sits in one short interval, i.e. when the surface is sharp. The double sum
    is 2 sum_i w_i (m_i W_<i - (wm)_<i) with per-ray running sums (linear, not quadratic)."""
    out = torch.zeros(n_rays, device=w.device, dtype=w.dtype)
    if len(w) == 0:
        return out
    before = _sum_before(torch.stack([w, w * m], 1), ray, start).to(w.dtype)  # both at once
    pair = 2 * w * (m * before[:, 0] - before[:, 1])
    return out.index_add(0, ray, pair + w * w * (width / 3))


class OccupancyGrid:
    """Which cells of the box may hold density at any time (max over the given times),
    rebuilt at each update from the density at the cells' centres."""

    def __init__(self, bound: float, resolution: int = 64, device=None):
        self.bound, self.res = bound, resolution
        self.mask = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)

    def _points(self, jitter: bool = False) -> torch.Tensor:
        """One point per cell (r^3, 3): its centre, or with `jitter` a point uniform in it."""
        r, b = self.res, self.bound
        axis = (torch.arange(r, device=self.mask.device) + 0.5) / r * 2 * b - b
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        if jitter:
            pts = pts + (torch.rand_like(pts) * 2 - 1) * (b / r)
        return pts

    @staticmethod
    def _densities(density_fn, pts: torch.Tensor, times, chunk: int) -> torch.Tensor:
        """The density at each point, the max over `times` (None: the canonical field)."""
        times = list(times)
        if len(times) > 1 and None not in times:
            # Every time in one batch of points, each with its own time: the eight frames of
            # a refresh in a few large calls, not dozens of small ones (a call costs the host
            # ~1 ms on a GPU).
            t = to_device([float(v) for v in times], pts.device,
                          pts.dtype).repeat_interleave(len(pts))
            x = pts.repeat(len(times), 1)
            dens = torch.cat([density_fn(x[i : i + chunk], t[i : i + chunk])
                              for i in range(0, len(x), chunk)])
            return dens.view(len(times), -1).amax(0)
        out = torch.full((len(pts),), -torch.inf, device=pts.device, dtype=pts.dtype)
        for t in times:
            for i in range(0, len(pts), chunk):
                out[i : i + chunk] = torch.maximum(out[i : i + chunk],
                                                   density_fn(pts[i : i + chunk], t))
        return out

    @torch.no_grad()
    def update(self, density_fn, times=(None,), threshold: float = 0.01,
               chunk: int = 2**18) -> float:
        """Mark the cells whose centre has density above `threshold` at any of `times` (None:
        the canonical field), dilated by one cell; `density_fn(x, t)` takes one time or one
        per point, at most `chunk` points a call. Returns the occupied fraction."""
        r = self.res
        occ = self._densities(density_fn, self._points(), times, chunk) > threshold
        occ = occ.reshape((r,) * 3).float()[None, None]
        dilated = torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
        self.mask = dilated
        return float(dilated.float().mean())

    def query(self, x: torch.Tensor) -> torch.Tensor:
        idx = ((x + self.bound) / (2 * self.bound) * self.res).long().clamp(0, self.res - 1)
        return self.mask[idx[:, 0], idx[:, 1], idx[:, 2]]


class DecayingOccupancyGrid(OccupancyGrid):
    """Animate124's density grid (`update_extra_state` in its nerf/renderer.py and
    dnerf/renderer.py): a density kept per cell across updates. Each update takes the
    density at one point drawn uniformly in every cell (the max over the given times) and
    keeps max(`decay` x the kept density, the new one); a cell is occupied where the kept
    density is above min(the mean kept density, `threshold`).

    So new density shows at once while a region that emptied fades out over updates (its
    kept density falls by `decay` each time, the mean with it), and the jittered points
    cover each cell over the updates where a fixed centre could miss a thin part; the
    threshold follows the mean, so the faint fog below the scene's average density is
    skipped, up to `threshold` (density per world unit)."""

    def __init__(self, bound: float, resolution: int = 128, device=None, *,
                 decay: float = 0.95, threshold: float = 10.0):
        super().__init__(bound, resolution, device)
        self.decay, self.threshold = decay, threshold
        self.density = torch.zeros((resolution,) * 3, device=device)

    @torch.no_grad()
    def update(self, density_fn, times=(None,), chunk: int = 2**18) -> float:
        """Fold the density at `times` into the kept one and mark the occupied cells.
        Returns the fraction of cells that this update's density (not the kept one) puts
        above the threshold in effect: 0 once the fields hold no density anywhere, which
        the kept density would take many updates to show."""
        fresh = self._densities(density_fn, self._points(jitter=True), times, chunk)
        fresh = fresh.view(self.density.shape)
        self.density = torch.maximum(self.density * self.decay, fresh)
        # A tensor, not a float: no host sync for it (NaN densities make it NaN, and then
        # no cell is occupied).
        cut = self.density.mean().clamp(max=self.threshold)
        self.mask = self.density > cut
        return float((fresh > cut).float().mean())


SHADING_MODES = ("albedo", "lambertian", "textureless", "normals")

# What `render_rays(regularisers=...)` may add, per ray (the SDS stages' regularisers).
REGULARISER_OUTPUTS = ("entropy", "orientation", "normal_image")


def _repeat_times(t, copies: int):
    """The time(s) of `copies` stacked copies of a batch of points: one per point repeated,
    or the one time as it is."""
    return t.repeat(copies) if torch.is_tensor(t) and t.ndim == 1 else t


def weight_entropy(w: torch.Tensor) -> torch.Tensor:
    """Binary entropy in bits of sample weights in [0, 1], clamped off 0 and 1 as Animate124
    does (log 0): 0 for an empty or an opaque sample, 1 at one half."""
    w = w.clamp(1e-5, 1 - 1e-5)
    return -(w * torch.log2(w) + (1 - w) * torch.log2(1 - w))


@dataclass
class Shading:
    """How samples are coloured. "lambertian": albedo x (ambient + (1 - ambient) max(n.l, 0));
    "textureless": the same on a white material; "normals": (n + 1) / 2; "albedo": as is.
    The light: `light`, one unit direction towards it (object frame); else, with
    `light_offset`, a light near each ray's camera, towards normalize(origin + offset)
    (Animate124 / stable-dreamfusion: the camera position plus Gaussian noise); else a
    headlight (each ray lit from its own camera)."""

    light: torch.Tensor | None = None
    ambient: float = 0.1
    mode: str = "lambertian"
    light_offset: torch.Tensor | None = None

    def __post_init__(self):
        if self.mode not in SHADING_MODES:
            raise ValueError(f"shading mode {self.mode!r}: one of {', '.join(SHADING_MODES)}")


class Renderer:
    """Volume renderer of a canonical field, optionally moved by a motion field.

    The canonical field is called as `canonical(x, group=1) -> (density, albedo)` (see
    `CanonicalField.forward`; `group` is a hint a field may ignore) and `.density(x)`; the
    motion field as `motion.warp(x, t)`.

    Sampling is in two passes when it pays (gradients or normals wanted): a no-grad pass
    evaluates only the density at the samples the occupancy grid lets through, and the
    samples that cannot change the picture (transmittance already below `min_transmittance`,
    or opacity below `min_alpha`) are dropped; the second pass evaluates density, albedo and
    normals, with gradients, at the rest only. On a fitted object that is a few samples per
    ray instead of every occupied one, which is what bounds the memory autograd keeps.
    """

    # How shading normals are taken (`normals=`), and the points each costs per sample:
    # "world": Animate124's, central differences of the density seen at time t around the
    # world point (the point and 6 neighbours, each through the warp); "canonical": forward
    # differences of the canonical density at the warped point (the point and 3 neighbours,
    # one warp), which lights a turning part as it lies at rest but costs a third as much
    # in a dynamic clip step (docs/BENCHMARKS.md); "jacobian": the canonical differences
    # turned by the warp's Jacobian (J^T grad), the same normals as "world" to first order,
    # from the 4 canonical points and 3 more warps taken without gradients.
    NORMAL_STENCILS = {"world": 7, "canonical": 4, "jacobian": 4}
    # The first pass's runs (below): each run costs a host sync and its own field calls,
    # which outweigh the few samples a middle run such as (8, 16) would save; the dynamic
    # render is bound by its host (docs/BENCHMARKS.md).
    FIRST_PASS_RUNS = (8,)
    # Points per field call (`point_chunk`), when not given: the PyTorch hash grid's
    # transient gathers (about 6 KB per 4D point) bound it; through the Triton kernels there
    # are none, and each call costs the host about a millisecond (warp + canonical) while the
    # GPU waits, so the dynamic clip's shaded samples go in one call (docs/BENCHMARKS.md).
    POINT_CHUNK, FUSED_POINT_CHUNK = 2**19, 2**21

    def __init__(self, canonical, motion=None, *, bound: float = 1.0, samples: int = 64,
                 occupancy: OccupancyGrid | None = None, normals: str = "canonical",
                 normal_eps: float | None = None, point_chunk: int | None = None,
                 min_transmittance: float = 1e-4,
                 min_alpha: float = 1e-4, prune: bool = True, prune_above: int = 2**20,
                 first_pass_runs: tuple[int, ...] = FIRST_PASS_RUNS):
        self.canonical, self.motion = canonical, motion
        # Fields see at most this many points per call (None: `points_per_call`), whatever
        # the batch of rays.
        self.point_chunk = point_chunk
        self.bound, self.samples, self.occupancy = bound, samples, occupancy
        if normals not in self.NORMAL_STENCILS:
            raise ValueError(f"normals must be one of {', '.join(self.NORMAL_STENCILS)}, "
                             f"not {normals!r}")
        self.normals, self.normal_stencil = normals, self.NORMAL_STENCILS[normals]
        # World units: Animate124's 1e-2 for its central differences; the forward ones
        # keep their smaller step (their error is first order in it).
        self.normal_eps = normal_eps or (1e-2 if normals == "world" else 1e-3)
        self.min_transmittance, self.min_alpha, self.prune = min_transmittance, min_alpha, prune
        # The first pass runs only when the gradient pass would otherwise evaluate more
        # points than this (occupied samples, `normal_stencil` points each with normals): on a small
        # batch its launches and host syncs cost more than it saves: one 128 x 128 view lit
        # by albedo (the reference steps, ~230 k points on a fitted object;
        # docs/BENCHMARKS.md). The static stage's SDS view with normals (~200 k samples,
        # ~1.4 M points) is above it, and faster for it.
        self.prune_above = prune_above
        self._max_tau = -math.log(min_transmittance)  # a ray with more is done
        # The first pass marches each ray's occupied samples in runs: the first `runs[0]`,
        # then up to `runs[1]`, ..., then the rest, each later run only on the rays whose light has
        # not run out (early termination). On a fitted object the surface is within a ray's
        # first few occupied samples, and the solid interior behind it is never evaluated.
        if any(r < 1 for r in first_pass_runs) or list(first_pass_runs) != sorted(
                set(first_pass_runs)):
            raise ValueError("first_pass_runs: ascending sample counts of at least 1")
        self.runs = tuple(first_pass_runs)
        # Sample counts of the last render_rays call: inside the box, in occupied cells, and
        # shaded (after pruning); what the tests and benchmarks read of the first pass's effect.
        self.last_samples: dict[str, torch.Tensor | int] = {}

    @property
    def step_length(self) -> float:
        """The longest ray step: the box's diagonal over the samples per ray. The occupancy
        and extraction thresholds are stated per step of this length."""
        return step_length(self.bound, self.samples)

    def _moves(self, t) -> bool:
        """Whether points seen at time t need the motion field. Time 0 does not: both motion
        fields warp by D(x, 0) = 0 exactly, so frame 0 is the canonical field, and skipping
        the warp there saves its grid lookups and their backward pass (every static-stage
        render and every reference step is at time 0) without changing a value."""
        if self.motion is None or t is None:
            return False
        return torch.is_tensor(t) or float(t) != 0.0

    def density_at(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Density seen at points x at time t (None, a number or one per point)."""
        if self._moves(t):
            x = self.motion.warp(x, t)
        return self.canonical.density(x)

    def _shade_points(self, x: torch.Tensor, t, with_normals: bool) -> tuple:
        """Density, albedo (and normals, as `normals` says) at world points x at time(s) t."""
        if with_normals and self.normals == "world":
            return self._shade_world(x, t)
        moves = self._moves(t)
        xc = self.motion.warp(x, t) if moves else x
        if not with_normals:
            dens, alb = self.canonical(xc)
            return dens, alb, None
        # Forward differences of the canonical density at the warped point, evaluated in the
        # same call as the point itself (one batch of 4n points).
        n, e = len(xc), self.normal_eps
        offs = torch.eye(3, device=xc.device, dtype=xc.dtype) * e
        dens, alb = self.canonical(torch.cat([xc, xc + offs[0], xc + offs[1], xc + offs[2]]),
                                   group=self.normal_stencil)
        grad = (dens[n:].view(3, n) - dens[:n]).T
        if moves and self.normals == "jacobian":
            # d sigma(w(x)) / dx = J^T grad, J_ij = dw_i / dx_j by forward differences.
            with torch.no_grad():
                ahead = self.motion.warp(torch.cat([x + offs[0], x + offs[1], x + offs[2]]),
                                         _repeat_times(t, 3))
                jac = (ahead.view(3, n, 3) - xc.detach()) / e  # [j, point, i] = J_ij
            grad = torch.einsum("jpi,pi->pj", jac, grad)
        return dens[:n], alb[:n], -torch.nn.functional.normalize(grad, dim=-1)

    def _shade_world(self, x: torch.Tensor, t) -> tuple:
        """Animate124's normals: minus the gradient of the density seen at time t with respect
        to the world point, sigma(warp(x, t)), by central differences at x +- `normal_eps`
        per axis, so a moving part is shaded as it is turned at time t. The point and its 6
        neighbours go through the warp and the canonical field in one call each."""
        n, e = len(x), self.normal_eps
        offs = torch.eye(3, device=x.device, dtype=x.dtype) * e
        stencil = torch.cat([x, x + offs[0], x - offs[0], x + offs[1], x - offs[1],
                             x + offs[2], x - offs[2]])
        if self._moves(t):
            stencil = self.motion.warp(stencil, _repeat_times(t, self.normal_stencil))
        # No grouping hint: the hash-grid kernels group power-of-two copies only.
        dens, alb = self.canonical(stencil)
        pm = dens[n:].view(3, 2, n)
        grad = (pm[:, 0] - pm[:, 1]).T  # the 1 / (2 eps) scale: lost in the normalisation
        return dens[:n], alb[:n], -torch.nn.functional.normalize(grad, dim=-1)

    def _per_point(self, t, live_index: torch.Tensor):
        """The time of each live sample: t itself, or t per ray gathered per sample."""
        if torch.is_tensor(t) and t.ndim == 1:
            return t[live_index // self.samples]
        return t

    def points_per_call(self, device) -> int:
        """`point_chunk`, or by default FUSED_POINT_CHUNK when every field's hash grid runs
        its fused kernels on `device`, else POINT_CHUNK."""
        if self.point_chunk is not None:
            return self.point_chunk
        fields = [f for f in (self.canonical, self.motion) if f is not None]
        fused = all(getattr(f, "encoder", None) is not None and f.encoder.fused_on(device)
                    for f in fields)
        return self.FUSED_POINT_CHUNK if fused else self.POINT_CHUNK

    def _chunks(self, fn, x: torch.Tensor, t) -> list:
        step = self.points_per_call(x.device)
        per_point = torch.is_tensor(t) and t.ndim == 1
        return [fn(x[i : i + step], t[i : i + step] if per_point else t)
                for i in range(0, len(x), step)]

    @torch.no_grad()
    def _visible(self, pts, idx, t, delta) -> torch.Tensor:
        """Of the samples idx, those that can still show: the first pass (no gradients).

        A ray's occupied samples are taken in runs (`runs`, by their rank on the ray), each
        run only on the rays whose light has not yet run out, so the samples behind an opaque
        surface are not evaluated at all (early termination). One host sync per run."""
        s = self.samples
        ray = idx // s
        rank = torch.arange(len(idx), device=idx.device) - _run_start(ray)
        edges = to_device(self.runs, idx.device, torch.long)
        run_of = torch.bucketize(rank, edges, right=True)
        spent = torch.zeros(len(delta), device=idx.device, dtype=torch.float64)  # tau so far
        keep = torch.zeros(len(idx), device=idx.device, dtype=torch.bool)
        for r in range(len(self.runs) + 1):
            take = run_of == r
            if r:
                take &= spent[ray] < self._max_tau
            at = take.nonzero()[:, 0]
            if len(at) == 0:
                continue
            sel, on = idx[at], ray[at]
            sigma = torch.cat(self._chunks(self.density_at, pts[sel], self._per_point(t, sel)))
            tau = sigma * delta[on]
            trans = _packed_transmittance(tau, on) * torch.exp(-spent[on]).to(tau.dtype)
            keep[at] = (trans > self.min_transmittance) & (-torch.expm1(-tau) > self.min_alpha)
            spent.index_add_(0, on, tau.double())
        return idx[keep]  # still in ray order (by ray, then by step): compositing needs it

    def _sample_depths(self, o, d, jitter: bool):
        """Per ray its entry distance and length inside the box (0 for a ray that misses it),
        and the depths (R, S) of its `samples` steps: stratified at the steps' centres, or
        one uniform draw within each step with `jitter`."""
        n_rays, s = len(o), self.samples
        near, far = box_intersect(o, d, self.bound)
        steps = (torch.arange(s, device=o.device, dtype=o.dtype) + 0.5) / s
        if jitter:
            steps = steps + (torch.rand(n_rays, s, device=o.device) - 0.5) / s
        length = (far - near).clamp(min=0)
        return near, length, near[:, None] + length[:, None] * steps

    def render_rays(self, o, d, t=None, *, shading: Shading | None = None,
                    background=(1.0, 1.0, 1.0), jitter: bool = False,
                    distortion: bool = False, regularisers: tuple[str, ...] = ()) -> dict:
        """Render rays at time t: None (canonical), a number, or one time per ray (n,).
        `background` is one colour or one per ray (n, 3). `distortion`: also the per-ray
        distortion loss ("distortion", see `_packed_distortion`). `regularisers`: also these
        sums over each ray's shaded samples (`REGULARISER_OUTPUTS`; the last two need normals):
        "entropy" of the weights (`weight_entropy`), "orientation" (weight, held fixed, x
        max(n . ray direction, 0)^2), "normal_image" (weight, held fixed, x (n + 1) / 2), and
        with either of the first two "samples", its samples in occupied cells, pruned ones
        included, for means over samples that do not depend on whether the first pass ran.

        Samples are packed: only the (ray, step) pairs that reach the fields are kept, in ray
        order, and compositing sums over each ray's run of them (no rays x steps arrays
        beyond the positions and the occupancy test)."""
        shading = shading or Shading()
        with_normals = shading.mode != "albedo"
        unknown = set(regularisers) - set(REGULARISER_OUTPUTS)
        if unknown or (not with_normals and {"orientation", "normal_image"} & {*regularisers}):
            raise ValueError(f"regularisers {sorted(regularisers)}: of {REGULARISER_OUTPUTS}, "
                             f"orientation and normal_image with a shading that has normals")
        n_rays, s = len(o), self.samples
        near, length, z = self._sample_depths(o, d, jitter)
        hit = length > 0
        z = z.reshape(-1)  # (R * S,)
        delta = length / s  # per ray
        pts = o.repeat_interleave(s, 0) + d.repeat_interleave(s, 0) * z[:, None]
        live = hit.repeat_interleave(s)
        if self.occupancy is not None:
            live = live & self.occupancy.query(pts)
        idx = live.nonzero()[:, 0]  # ascending: by ray, then by step
        occupied = len(idx)
        to_shade = occupied * (self.normal_stencil if with_normals else 1)  # grid points
        if (self.prune and to_shade > self.prune_above
                and (with_normals or torch.is_grad_enabled())):
            idx = self._visible(pts, idx, t, delta)
        self.last_samples = {"in_box": hit.sum() * s, "occupied": occupied,
                             "shaded": len(idx)}
        ray = idx // s
        if len(idx):
            parts = self._chunks(lambda x, tt: self._shade_points(x, tt, with_normals),
                                 pts[idx], self._per_point(t, idx))
            sigma = torch.cat([p[0] for p in parts])
            albedo = torch.cat([p[1] for p in parts])
            normal = torch.cat([p[2] for p in parts]) if with_normals else None
        else:
            sigma = torch.zeros(0, device=o.device)
            albedo = torch.zeros(0, 3, device=o.device)
            normal = torch.zeros(0, 3, device=o.device) if with_normals else None
        tau = sigma * delta[ray]
        start = _run_start(ray)  # shared by the transmittance and the distortion loss
        weights = -torch.expm1(-tau) * _packed_transmittance(tau, ray, start)
        if shading.mode in ("lambertian", "textureless"):
            if shading.light is not None:
                light = to_device(shading.light, normal.device, normal.dtype)
            elif shading.light_offset is not None:
                offset = to_device(shading.light_offset, o.device, o.dtype)
                light = torch.nn.functional.normalize(o + offset, dim=-1)[ray]
            else:
                light = -d[ray]
            lam = (normal * light).sum(-1).clamp(min=0.0)
            shade = (shading.ambient + (1 - shading.ambient) * lam)[:, None]
            colour = albedo * shade if shading.mode == "lambertian" else shade.expand(-1, 3)
        elif shading.mode == "normals":
            colour = (normal + 1) * 0.5
        else:
            colour = albedo

        def per_ray(v):  # sum over each ray's samples
            return torch.zeros((n_rays, *v.shape[1:]), device=o.device,
                               dtype=v.dtype).index_add(0, ray, v)

        acc = per_ray(weights)
        bg = to_device(background, o.device, o.dtype)
        extra = {}
        if distortion:
            m = (z[idx] - near[ray]) / length[ray].clamp(min=1e-9)
            extra["distortion"] = _packed_distortion(weights, m, ray, 1.0 / s, n_rays, start)
        if "entropy" in regularisers:
            extra["entropy"] = per_ray(weight_entropy(weights))
        if "orientation" in regularisers:
            facing = (normal * d[ray]).sum(-1).clamp(min=0.0)
            extra["orientation"] = per_ray(weights.detach() * facing * facing)
        if "normal_image" in regularisers:
            extra["normal_image"] = per_ray(weights.detach()[:, None] * (normal + 1) * 0.5)
        if {"entropy", "orientation"} & {*regularisers}:
            extra["samples"] = live.view(n_rays, s).sum(1).to(weights.dtype)
        return {**extra,
            "rgb": per_ray(weights[:, None] * colour) + (1.0 - acc)[:, None] * bg,
            "alpha": acc,
            "depth": per_ray(weights * z[idx]) / acc.clamp(min=1e-6),
            "normal": per_ray(weights[:, None] * normal) if with_normals
            else torch.zeros(n_rays, 3, device=o.device),
        }

    def render_rays_dense(self, o, d, *, background=(1.0, 1.0, 1.0),
                          jitter: bool = False) -> dict:
        """The canonical field (frame 0) coloured by albedo along rays o, d, at every sample
        in the box, as (rays, samples) arrays: no occupancy test, no pruning, no host sync,
        and shapes set by the rays alone, so that a step built on it can be captured as a CUDA
        graph (`pipeline.reference_graph`). The same picture as `render_rays` but for what
        the occupancy grid and pruning leave out there (cells marked empty, light below the
        thresholds). Returns rgb, alpha and depth per ray."""
        n_rays, s = len(o), self.samples
        _, length, z = self._sample_depths(o, d, jitter)  # a miss: length 0, no opacity
        sigma, albedo = self.canonical((o[:, None] + d[:, None] * z[..., None]).reshape(-1, 3))
        tau = sigma.view(n_rays, s) * (length / s)[:, None]
        # A ray's 64 or so samples: a float32 running sum loses nothing here (the packed
        # path sums millions of samples in one run, hence its float64).
        weights = -torch.expm1(-tau) * torch.exp(tau - torch.cumsum(tau, 1))
        acc = weights.sum(1)
        bg = to_device(background, o.device, o.dtype)
        return {"rgb": (weights[..., None] * albedo.view(n_rays, s, 3)).sum(1)
                + (1.0 - acc)[:, None] * bg,
                "alpha": acc,
                "depth": (weights * z).sum(1) / acc.clamp(min=1e-6)}

    def render(self, cameras: list[Camera], times: list | None = None, *, chunk: int = 2**18,
               **kw) -> dict:
        """One image per (camera, time), all rays of the batch rendered together in chunks
        (cameras of one size): each output is (B, H, W, ...). The default chunk holds the
        dynamic stage's whole clip (16 x 128^2 rays, ~0.6 GB of per-sample positions and
        indices): every chunk is another round of small kernel launches and host syncs."""
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
            values = [0.0 if x is None else float(x) for x in times]
            if any(values):  # all at time 0: the canonical field (`_moves`)
                t = to_device(values, device).repeat_interleave(w * h)
        parts = [self.render_rays(o[i : i + chunk], d[i : i + chunk],
                                  None if t is None else t[i : i + chunk], **kw)
                 for i in range(0, len(o), chunk)]
        return {k: torch.cat([p[k] for p in parts]).reshape(len(cameras), h, w, -1).squeeze(-1)
                for k in parts[0]}
