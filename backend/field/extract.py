"""From the fields to an AnimatedMesh: marching cubes on the canonical density, cleanup,
decimation, albedo colours, and per-frame vertices through the motion field.

The motion field is a backward warp (seen point -> canonical point). Frame vertices need the
forward map, so each canonical vertex c is carried to the x that solves x + D(x, t) = c by
Newton's method (`forward_warp`); the largest residual is reported so a caller can see when
the warp is not invertible there. Inverting the one field keeps a single motion model (no
second, forward field to keep consistent with it); the synthetic benchmark reports the
residual next to the Chamfer distance.
"""

from __future__ import annotations

import math

import fast_simplification
import mcubes
import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage
from scipy.sparse.csgraph import connected_components

from animate4d.protocol import AnimatedMesh, Camera

from .fields import warp_jacobian
from .render import CameraBatch, OccupancyGrid, Renderer, Shading, camera_rays


@torch.no_grad()
def density_grid(canonical, bound: float, resolution: int, chunk: int = 2**18,
                 device=None) -> np.ndarray:
    axis = torch.linspace(-bound, bound, resolution, device=device)
    out = np.empty(resolution**3, np.float32)
    pts_all = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    for i in range(0, len(pts_all), chunk):
        out[i : i + chunk] = canonical.density(pts_all[i : i + chunk]).float().cpu().numpy()
    return out.reshape((resolution,) * 3)


def fill_interior(dens: np.ndarray, threshold: float, close_voxels: int = 2,
                  min_fraction: float = 0.05) -> np.ndarray:
    """The density with everything the cameras cannot have seen made solid or empty.

    The fitted interior is arbitrary (no ray reaches it): its dips below the threshold become
    cavities, tunnels and floating inner pieces in the marching-cubes mesh. So: solids smaller
    than `min_fraction` of the largest are emptied, a morphological closing closes tunnels
    narrower than about 2 * close_voxels voxels, and what is then enclosed is filled.
    """
    inside = dens > threshold
    labels, n = ndimage.label(inside)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.concatenate([[False], sizes >= min_fraction * sizes.max()])
        inside = keep[labels]
    solid = inside
    if close_voxels > 0:
        pad = close_voxels + 1
        solid = ndimage.binary_closing(np.pad(inside, pad), iterations=close_voxels)
        solid = solid[pad:-pad, pad:-pad, pad:-pad]
    solid = ndimage.binary_fill_holes(solid)
    out = np.where(solid & ~inside, 2.0 * threshold, dens)
    return np.where(~solid & (dens > threshold), 0.5 * threshold, out)


def fibonacci_cameras(bound: float, views: int, size: int) -> list[Camera]:
    """`views` cameras spread evenly over the whole sphere (below the object too), each
    seeing the whole box [-bound, bound]^3 (60 degrees, at 3.2 bound)."""
    cams = []
    for k in range(views):
        z = 1.0 - 2.0 * (k + 0.5) / views
        r, a = math.sqrt(max(0.0, 1.0 - z * z)), k * math.pi * (3.0 - math.sqrt(5.0))
        eye = 3.2 * bound * np.array([r * math.cos(a), r * math.sin(a), z])
        up = (0.0, 0.0, 1.0) if r > 1e-3 else (0.0, 1.0, 0.0)
        cams.append(Camera.look_at(eye, fov_deg=60.0, resolution=(size, size), up=up))
    return cams


@torch.no_grad()
def look_around(canonical, bound: float, resolution: int, *,
                views: int = 24, size: int = 128, device=None) -> tuple[np.ndarray, torch.Tensor]:
    """What views all around the object see of the field: (R, R, R) bool, the grid points
    (as `density_grid` lays them out) that some view sees as empty space, and the points
    (n, 3) where opaque pixels' rays end (their rendered depth).

    A grid point is seen empty when it projects onto a pixel the field leaves transparent
    (alpha < 0.1), or lies in front of what that pixel shows by more than a voxel.

    Everything else was never seen from outside: the fitted interior, which is arbitrary,
    and pockets reached only through tunnels no view looks along. Extraction makes those
    solid, so their dips below the threshold do not become surfaces inside the object.
    """
    samples = min(512, 2 * resolution)
    occupancy = OccupancyGrid(bound, 64, device=device)
    renderer = Renderer(canonical, bound=bound, samples=samples, occupancy=occupancy)
    occupancy.update(renderer.density_at, threshold=0.01 / renderer.step_length)
    cameras = fibonacci_cameras(bound, views, size)
    batch = CameraBatch(cameras, device)
    axis = torch.linspace(-bound, bound, resolution, device=device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    empty = torch.zeros(len(pts), dtype=torch.bool, device=device)
    margin = 2 * bound / (resolution - 1)
    surface = []
    for i, cam in enumerate(cameras):
        out = renderer.render([cam], shading=Shading(mode="albedo"))
        alpha, depth = out["alpha"][0].reshape(-1), out["depth"][0].reshape(-1)
        o, d = camera_rays(cam, device)
        opaque = alpha > 0.95
        surface.append(o[opaque] + d[opaque] * depth[opaque, None])
        index = torch.full((len(pts),), i, device=device, dtype=torch.long)
        uv, _ = batch.project(index, pts)
        px = uv.floor().long()
        inside = (px >= 0).all(-1) & (px[:, 0] < size) & (px[:, 1] < size)
        pix = (px[:, 1].clamp(0, size - 1) * size + px[:, 0].clamp(0, size - 1))
        dist = (pts - batch.location[i]).norm(dim=-1)
        empty |= inside & ((alpha[pix] < 0.1) | (dist < depth[pix] - margin))
    return empty.reshape((resolution,) * 3).cpu().numpy(), torch.cat(surface)


def surface_level(canonical, surface: torch.Tensor, fallback: float) -> float:
    """The density at which the renders put the surface: the median density at the points
    where opaque pixels' rays end. Marching cubes at this level puts the mesh where the images
    show the surface (the default level, half-opaque per render step, sits a soft surface's
    ramp away from it). The fallback when no pixel is opaque, and the result kept within a
    factor of 10 of it."""
    if len(surface) < 100:
        return fallback
    level = float(torch.median(canonical.density(surface)))
    return float(np.clip(level, fallback / 10, fallback * 10))


def keep_large_components(vertices, faces, min_fraction: float = 0.05):
    """Drop connected pieces with fewer than `min_fraction` of the largest one's faces."""
    n = len(vertices)
    rows = np.repeat(np.arange(len(faces)), 3)
    graph = sp.coo_matrix((np.ones(len(rows)), (faces.reshape(-1), rows + n)),
                          shape=(n + len(faces),) * 2)
    _, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    counts = np.bincount(face_label)
    keep = counts[face_label] >= min_fraction * counts.max()
    faces = faces[keep]
    used = np.unique(faces)
    remap = -np.ones(n, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@torch.no_grad()
def forward_warp(motion, canonical_pts: torch.Tensor, t: float, iterations: int = 12,
                 eps: float = 1e-3):
    """x with x + D(x, t) = c for each canonical point c; and the largest residual.

    Newton's method on r(x) = x + D(x, t) - c with a finite-difference Jacobian, started
    from one fixed-point step. Unlike the plain fixed point x <- c - D(x, t) it does not need
    |dD/dx| < 1, only an invertible warp (which the rigidity regulariser keeps); a step that
    does not reduce a point's residual is halved.
    """
    c = canonical_pts

    def residual(x):
        return x + motion.displacement(x, t) - c

    x = c - motion.displacement(c, t)
    r = residual(x)
    for _ in range(iterations):
        err = r.norm(dim=-1)
        if float(err.max()) < 1e-7:
            break
        jac = warp_jacobian(motion, x, t, eps)  # (n, 3, 3): d r_j / d x_i
        step = torch.linalg.solve(jac, r.unsqueeze(-1)).squeeze(-1)
        bad = ~torch.isfinite(step).all(-1)
        step[bad] = r[bad]
        scale = torch.ones(len(x), 1, device=c.device, dtype=c.dtype)
        for _ in range(4):  # backtracking, per point
            x_new = x - scale * step
            r_new = residual(x_new)
            worse = r_new.norm(dim=-1) > err
            if not bool(worse.any()):
                break
            scale[worse] *= 0.5
        keep = (r_new.norm(dim=-1) <= err)[:, None]
        x, r = torch.where(keep, x_new, x), torch.where(keep, r_new, r)
    return x, float(r.norm(dim=-1).max()) if len(r) else 0.0


@torch.no_grad()
def extract(canonical, motion=None, *, frames: int = 24, fps: float = 24.0,
            bound: float = 1.0, resolution: int = 256, threshold: float = 10.0,
            target_faces: int = 50_000, close_voxels: int = 2, carve_views: int = 24,
            level: str = "threshold", transform=None, metadata=None,
            device=None) -> tuple[AnimatedMesh, dict]:
    """The AnimatedMesh and a report (face counts, warp residual, the level used, voxels made
    solid because no view sees them: `look_around`; carve_views=0 skips that).

    `level`: "threshold" runs marching cubes at `threshold`; "rendered" at the density where
    the views' renders put the surface (`surface_level`, needs carve_views > 0)."""
    if level not in ("threshold", "rendered"):
        raise ValueError("level must be 'threshold' or 'rendered'")
    dens = density_grid(canonical, bound, resolution, device=device)
    if dens.max() <= threshold:
        raise ValueError(f"no density above the threshold {threshold}: nothing to extract")
    unseen_filled, default_threshold = 0, threshold
    if carve_views > 0:
        seen, surface = look_around(canonical, bound, resolution, views=carve_views,
                                    device=device)
        if level == "rendered":
            threshold = surface_level(canonical, surface, threshold)
        # Two voxels off everything seen empty: the thin band just outside the surface that
        # depth alone cannot clear (pixel footprint, blur) stays as the field has it.
        unseen = ndimage.binary_erosion(~seen, iterations=2, border_value=1) & \
            (dens <= threshold)
        unseen_filled = int(unseen.sum())
        dens = np.where(unseen, 2.0 * threshold, dens)
    dens = fill_interior(dens, threshold, close_voxels)
    verts, faces = mcubes.marching_cubes(dens, threshold)
    verts = verts / (resolution - 1) * 2 * bound - bound
    faces = faces.astype(np.int64)[:, ::-1]  # outward (density grows inwards)
    raw_faces = len(faces)
    verts, faces = keep_large_components(verts, faces)
    if len(faces) > target_faces:
        v, f = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int32),
                                            target_count=target_faces)
        verts, faces = v.astype(np.float64), f.astype(np.int64)
    vt = torch.as_tensor(verts, dtype=torch.float32, device=device)
    _, albedo = canonical(vt)
    colours = np.empty((len(verts), 4), np.uint8)
    colours[:, :3] = np.clip(np.rint(albedo.float().cpu().numpy() * 255), 0, 255)
    colours[:, 3] = 255
    out = np.empty((frames, len(verts), 3), np.float32)
    worst = 0.0
    for k in range(frames):
        if motion is None or k == 0:
            out[k] = verts
            continue
        # A tensor time, so that a compiled motion field is not re-specialised per frame.
        x, residual = forward_warp(motion, vt, torch.tensor(k / frames, device=vt.device))
        out[k] = x.cpu().numpy()
        worst = max(worst, residual)
    mesh = AnimatedMesh(vertices=verts.astype(np.float32), faces=faces, frames=out, fps=fps,
                        transform=np.eye(4) if transform is None else transform,
                        colors=colours, metadata=metadata or {})
    return mesh, {"faces_marching_cubes": raw_faces, "faces": len(faces),
                  "unseen_voxels_filled": unseen_filled, "level": threshold,
                  "default_level": default_threshold,
                  "vertices": len(verts), "warp_residual_max": worst}
