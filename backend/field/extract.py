"""From the fields to an AnimatedMesh: marching cubes on the canonical density, cleanup,
decimation, albedo colours, and per-frame vertices through the motion field.

The motion field is a backward warp (seen point -> canonical point). Frame vertices need the
forward map, so each canonical vertex c is carried to the x that solves x + D(x, t) = c by
Newton's method (`forward_warp`), frame to frame by continuation in time (`carry`); vertices
where it does not converge (the warp folds there) take their neighbours' motion
(`fill_from_neighbours`), and the largest residual and the count of such vertices are
reported. Inverting the one field keeps a single motion model (no second, forward field to
keep consistent with it); the synthetic benchmark reports the residual next to the Chamfer
distance.
"""

from __future__ import annotations

import math

import mcubes
import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage
from scipy.sparse.csgraph import connected_components

from animate4d.protocol import AnimatedMesh, Camera

from ..mesh.geometry import EXPORT_FACES, decimate
from .fields import warp_jacobian
from .render import CameraBatch, OccupancyGrid, Renderer, Shading


class NothingToExtract(ValueError):
    """The canonical density is nowhere above the surface's threshold: no mesh to make."""


def grid_points(bound: float, resolution: int, device=None) -> torch.Tensor:
    """(R^3, 3) points of the extraction grid, corners included, in (x, y, z) index order."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def density_grid(canonical, bound: float, resolution: int, chunk: int = 2**18,
                 device=None) -> np.ndarray:
    out = np.empty(resolution**3, np.float32)
    pts_all = grid_points(bound, resolution, device)
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
def seen_empty(canonical, bound: float, resolution: int, *,
               views: int = 24, size: int = 128, device=None) -> np.ndarray:
    """(R, R, R) bool: grid points (as `density_grid` lays them out) that some view around
    the object sees as empty space: they project onto a pixel the field leaves transparent
    (alpha < 0.1), or lie in front of what that pixel shows by more than a voxel.

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
    pts = grid_points(bound, resolution, device)
    empty = torch.zeros(len(pts), dtype=torch.bool, device=device)
    margin = 2 * bound / (resolution - 1)
    for i, cam in enumerate(cameras):
        out = renderer.render([cam], shading=Shading(mode="albedo"))
        alpha, depth = out["alpha"][0].reshape(-1), out["depth"][0].reshape(-1)
        uv, _ = batch.project(i, pts)
        px = uv.floor().long()
        inside = (px >= 0).all(-1) & (px[:, 0] < size) & (px[:, 1] < size)
        pix = (px[:, 1].clamp(0, size - 1) * size + px[:, 0].clamp(0, size - 1))
        dist = (pts - batch.location[i]).norm(dim=-1)
        empty |= inside & ((alpha[pix] < 0.1) | (dist < depth[pix] - margin))
    return empty.reshape((resolution,) * 3).cpu().numpy()


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
                 eps: float = 1e-3, start: torch.Tensor | None = None):
    """x with x + D(x, t) = c for each canonical point c; and each point's residual |r|.

    Newton's method on r(x) = x + D(x, t) - c with a finite-difference Jacobian, started
    from `start` (e.g. the points' places at a nearby time) or else one fixed-point step.
    Unlike the plain fixed point x <- c - D(x, t) it does not need |dD/dx| < 1, only an
    invertible warp (which the rigidity regulariser keeps); a step that does not reduce a
    point's residual is halved.
    """
    c = canonical_pts

    def residual(x):
        return x + motion.displacement(x, t) - c

    x = c - motion.displacement(c, t) if start is None else start
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
    return x, r.norm(dim=-1)


# Newton solves between two times a clip's frame apart: seeded by the solution a fraction of
# a frame earlier, each starts near its root. From the fixed-point start alone Newton lost half
# the points of a swirl turning 3 rad at the rim, an invertible warp (tests/backend/test_field.py).
SUBSTEPS = 4
STUCK = 1e-4  # object-frame residual above which a carried point has no root where it is


@torch.no_grad()
def carry(motion, canonical_pts: torch.Tensor, t_to, x_from: torch.Tensor | None = None,
          t_from=0.0, substeps: int = SUBSTEPS, **newton):
    """`forward_warp` at time `t_to` by continuation: from the points' places `x_from` at
    `t_from` (default: time 0, where every point is its canonical self), through `substeps`
    evenly spaced times, each Newton solve seeded by the last. Where the warp folds, a point
    the continuation lost (residual above STUCK) takes the plain solve's answer where that
    one's residual is lower. Returns (x, residual)."""
    if substeps < 1:
        raise ValueError("carry needs at least one substep")
    c = canonical_pts
    x = c if x_from is None else x_from
    t0, t1 = float(t_from), float(t_to)
    for i in range(1, substeps + 1):
        t = torch.tensor(t0 + (t1 - t0) * i / substeps, device=c.device)
        x, residual = forward_warp(motion, c, t, start=x, **newton)
    stuck = residual > STUCK
    if bool(stuck.any()):
        t = torch.tensor(t1, device=c.device)
        alone, r_alone = forward_warp(motion, c[stuck], t, **newton)
        better = r_alone < residual[stuck]
        idx = stuck.nonzero()[:, 0][better]
        x[idx], residual[idx] = alone[better], r_alone[better]
    return x, residual


def fill_from_neighbours(vertices: np.ndarray, faces: np.ndarray, moved: np.ndarray,
                         bad: np.ndarray, sweeps: int = 100) -> np.ndarray:
    """`moved` with each bad vertex displaced by the mean displacement of its good (or already
    filled) mesh neighbours, ring by ring. Where the warp folds, Newton's method finds no
    inverse for a few vertices; their neighbours' motion is the best guess, and it keeps the
    surface in one piece instead of leaving spikes."""
    if not bad.any():
        return moved
    n = len(vertices)
    i, j = faces[:, [0, 1, 2]].ravel(), faces[:, [1, 2, 0]].ravel()
    adj = sp.coo_matrix((np.ones(2 * len(i)), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    disp = np.where(bad[:, None], 0.0, moved - vertices)
    known = ~bad
    for _ in range(sweeps):
        total, count = adj @ (disp * known[:, None]), adj @ known.astype(np.float64)
        new = ~known & (count > 0)
        if not new.any():
            break
        disp[new] = total[new] / count[new, None]
        known = known | new
    out = vertices + disp
    return np.where(known[:, None], out, moved).astype(moved.dtype)


@torch.no_grad()
def extract(canonical, motion=None, *, frames: int = 24, fps: float = 24.0,
            bound: float = 1.0, resolution: int = 256, threshold: float = 10.0,
            target_faces: int = EXPORT_FACES, close_voxels: int = 2, carve_views: int = 24,
            transform=None, metadata=None, device=None) -> tuple[AnimatedMesh, dict]:
    """The AnimatedMesh and a report (face counts, warp residual, voxels made solid because
    no view sees them: `seen_empty`; carve_views=0 skips that)."""
    dens = density_grid(canonical, bound, resolution, device=device)
    if dens.max() <= threshold:
        raise NothingToExtract(f"no density above the threshold {threshold:.3g}: nothing to "
                               f"extract")
    unseen_filled = 0
    if carve_views > 0:
        seen = seen_empty(canonical, bound, resolution, views=carve_views, device=device)
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
    verts, faces = decimate(verts, faces, target_faces)
    vt = torch.as_tensor(verts, dtype=torch.float32, device=device)
    _, albedo = canonical(vt)
    colours = np.empty((len(verts), 4), np.uint8)
    colours[:, :3] = np.clip(np.rint(albedo.float().cpu().numpy() * 255), 0, 255)
    colours[:, 3] = 255
    out = np.empty((frames, len(verts), 3), np.float32)
    worst, unconverged = 0.0, 0
    tolerance = 2e-3 * bound  # a tenth of a 256^3 voxel
    x = vt
    for k in range(frames):
        if motion is None or k == 0:
            out[k] = verts
            continue
        # Tensor times (in carry), so that a compiled motion field is not re-specialised.
        x, residual = carry(motion, vt, k / frames, x, (k - 1) / frames)
        residual = residual.cpu().numpy()
        bad = residual > tolerance
        out[k] = fill_from_neighbours(verts, faces, x.cpu().numpy(), bad)
        worst = max(worst, float(residual.max(initial=0.0)))
        unconverged = max(unconverged, int(bad.sum()))
    mesh = AnimatedMesh(vertices=verts.astype(np.float32), faces=faces, frames=out, fps=fps,
                        transform=np.eye(4) if transform is None else transform,
                        colors=colours, metadata=metadata or {})
    return mesh, {"faces_marching_cubes": raw_faces, "faces": len(faces),
                  "unseen_voxels_filled": unseen_filled,
                  "vertices": len(verts), "warp_residual_max": worst,
                  "warp_unconverged_max": unconverged}
