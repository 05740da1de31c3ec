"""Where a mesh is rooted, and how much of the motion each vertex takes.

Image preview moves each point by its height fraction. An artist's mesh needs more: a crown
resting on a trunk must move with the trunk, an arm must bend along its length rather than be
sheared by height, and the root may be pinned anywhere. So the share of the motion is the
geodesic distance from the root *through the object's volume*:

1. the surface is sampled densely and voxelised on a grid of GRID cells along its longest side;
   one cell of dilation joins parts that touch or rest on each other, and closed shells are
   filled, so distances run through the inside of a body, not around its skin;
2. Dijkstra over the occupied cells (26-neighbours) from the root's cells gives the distance;
   a part that floats free (touching nothing) is reached by a straight jump from the nearest
   reached cell, so it moves with what it is nearest to;
3. a few Jacobi steps of the grid Laplacian, the root held at 0, smooth the field (no kinks
   from the grid's metric), and each vertex reads it trilinearly: parts thinner than a cell
   read one value across their thickness, so they bend rather than shear.

The result, normalised to [0, 1] (0 at the root, 1 at the farthest point), replaces the height
fraction in the preview's motions (backend/preview/motion.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from ..mesh.geometry import surface_points
from ..preview.motion import Rig, rig_for

GRID = 64  # cells along the longest side of the mesh
ROOT_BAND = 0.03  # the found root: vertices this fraction of the height above the lowest
SMOOTHING_STEPS = 4
_PAD = 2


def root_mask(world: np.ndarray, pin: np.ndarray | None) -> np.ndarray:
    """The root's vertices: the pinned ones, else the lowest band along Z (world up)."""
    mask = np.zeros(len(world), bool)
    if pin is not None:
        mask[pin] = True
        return mask
    z = world[:, 2]
    z0 = float(z.min())
    return z <= z0 + ROOT_BAND * max(float(z.max()) - z0, 1e-12)


def rig_of(world: np.ndarray, root: np.ndarray, pinned: bool) -> Rig:
    """The pivot of the bends: image preview's (the base's middle, at the lowest point) for a
    found root; the pinned vertices' centre for a pinned one."""
    if not pinned:
        return rig_for(world)
    z = world[:, 2]
    height = max(float(z.max() - z.min()), 1e-6)
    centre = world[root].mean(axis=0)
    return Rig(float(centre[2]), height, centre[:2].copy())


def bend_weights(world: np.ndarray, faces: np.ndarray, root: np.ndarray,
                 grid: int = GRID) -> np.ndarray:
    """(N,) share of the motion per vertex, 0 on the root, 1 at the farthest vertex."""
    lo = world.min(axis=0)
    extent = np.ptp(world, axis=0)
    cell = max(float(extent.max()), 1e-12) / (grid - 1)
    dims = tuple(int(x) for x in np.ceil(extent / cell).astype(int) + 1 + 2 * _PAD)
    occ = np.zeros(dims, bool)
    for pts in surface_points(world, faces, 0.5 * cell):
        ijk = np.rint((pts - lo) / cell).astype(np.int64) + _PAD
        occ[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    occ = ndimage.binary_dilation(occ, np.ones((3, 3, 3), bool))
    occ = ndimage.binary_fill_holes(occ)
    rv = np.rint((world[root] - lo) / cell).astype(np.int64) + _PAD
    root_cells = np.zeros(dims, bool)
    root_cells[rv[:, 0], rv[:, 1], rv[:, 2]] = True
    dist = _geodesic(occ, root_cells, cell)
    dist = _smooth(dist, occ, root_cells)
    coords = ((world - lo) / cell + _PAD).T
    num = ndimage.map_coordinates(np.where(occ, dist, 0.0), coords, order=1, mode="nearest")
    den = ndimage.map_coordinates(occ.astype(np.float64), coords, order=1, mode="nearest")
    d = num / np.maximum(den, 1e-12)
    base = float(d[root].max())
    top = float(d.max())
    if top - base <= 1e-12:
        return np.zeros(len(world))
    return np.clip((d - base) / (top - base), 0.0, 1.0)


def _geodesic(occ: np.ndarray, root: np.ndarray, cell: float) -> np.ndarray:
    """Shortest distances through the occupied cells from the root cells (inf outside)."""
    index = np.full(occ.shape, -1, np.int64)
    count = int(occ.sum())
    index[occ] = np.arange(count)
    rows, cols, lens = [], [], []
    for off in _HALF_NEIGHBOURS:
        a = index[_window(occ.shape, off, 0)]
        b = index[_window(occ.shape, off, 1)]
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
        lens.append(np.full(int(ok.sum()), cell * float(np.linalg.norm(off))))
    # One extra node: the source of the second pass (floating parts).
    src = count
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(lens)
    graph = coo_matrix((w, (r, c)), shape=(count + 1, count + 1)).tocsr()
    seeds = index[root & occ]
    d = dijkstra(graph, directed=False, indices=seeds, min_only=True)
    unreached = ~np.isfinite(d[:count])
    if unreached.any():
        reached = np.zeros(occ.shape, bool)
        reached[occ] = ~unreached
        gap, nearest = ndimage.distance_transform_edt(~reached, return_indices=True)
        cells = np.nonzero(occ & ~reached)
        near = index[tuple(n[cells] for n in nearest)]
        offset = d[near] + gap[cells] * cell + 1e-9
        jumps = coo_matrix((offset, (np.full(len(offset), src), index[cells])),
                           shape=graph.shape).tocsr()
        d2 = dijkstra(graph + graph.T + jumps, directed=True, indices=src)
        d[:count][unreached] = d2[:count][unreached]
    out = np.full(occ.shape, np.inf)
    out[occ] = d[:count]
    return out


def _smooth(dist: np.ndarray, occ: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Jacobi steps of the Laplacian over the occupied cells, the root held at 0."""
    mask = occ.astype(np.float64)
    den = ndimage.uniform_filter(mask, 3, mode="constant")
    d = np.where(occ, dist, 0.0)
    for _ in range(SMOOTHING_STEPS):
        d = ndimage.uniform_filter(d * mask, 3, mode="constant") / np.maximum(den, 1e-12)
        d[root] = 0.0
    return np.where(occ, d, np.inf)


def _window(shape, off, side: int):
    """Slices of the grid for cell pairs (x, x + off): side 0 gives x, side 1 gives x + off."""
    out = []
    for n, o in zip(shape, off, strict=True):
        lo, hi = max(0, -o), n - max(0, o)
        out.append(slice(lo + o, hi + o) if side else slice(lo, hi))
    return tuple(out)


_HALF_NEIGHBOURS = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                    if (i, j, k) > (0, 0, 0)]
