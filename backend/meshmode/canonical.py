"""Mesh mode's canonical field: the artist's mesh itself, in the scene's object frame.

The GPU presets' scene is the box [-1, 1]^3 seen by cameras on a sphere of radius 1.8
(preprocess/framing.py). `ObjectFrame` puts the mesh there: its bounding box centred at the
origin, scaled so that its largest half-extent fills the share of the canonical view an image
job's object fills (1 - 2 x border), which keeps even the box's corners inside the field.

The field is then regressed onto the mesh (`field.fit.fit_shape`, as the image pipeline's
proxy start): high density inside the mesh, where its generalised winding number is above
1/2 (robust to open, non-manifold and multi-part meshes, unlike a ray-parity test), ramping
down across the surface over a couple of cells of a signed distance whose sign is that
winding number (smooth normals); albedo from the vertex colours. Both are precomputed once on
a grid and read trilinearly, so each fitting step costs two texture reads instead of a pass
over the triangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..field.extract import grid_points
from ..field.fit import fit_shape
from ..mesh.geometry import decimate, surface_points
from ..preprocess.framing import CANONICAL_FOV_DEG, CANONICAL_RADIUS, DEFAULT_BORDER

# The largest half-extent of the mesh in the object frame: what an image job's object spans.
HALF_SIZE = CANONICAL_RADIUS * math.tan(math.radians(CANONICAL_FOV_DEG) / 2) * \
    (1 - 2 * DEFAULT_BORDER)
# The occupancy is read on a grid of at most a few hundred cells per side; a mesh decimated to
# this many faces encloses the same cells, and the winding number's cost is points x faces.
WINDING_FACES = 20_000
# Grid points within this many cells of a surface sample get their own winding number: a
# sample is within half a cell of the surface it stands for, and rounds to a grid point
# within another half, so two cells cover every grid point whose cell the surface crosses.
BAND = 2
# The log-density regressed inside and outside. A fitted field blurs the step between them over
# its finest cells, and the surface sits at the middle of that blur; the renders' surface is
# where the density is half-opaque per ray step (about e^2.5 at the presets' 64 samples), so
# the middle goes there, 2.5 above the image proxy's (5, -5): otherwise every silhouette
# shrinks by the blur's half-width (a pixel at 32 px on the tiny models' grid).
LOG_DENSITY = (10.0, -5.0)
GREY = 0.6  # albedo of a mesh that comes with no colours


@dataclass(frozen=True)
class ObjectFrame:
    """World (Blender axes) <-> the scene's object frame: object = (world - centre) x scale."""

    centre: np.ndarray
    scale: float

    @classmethod
    def of(cls, world: np.ndarray, faces: np.ndarray) -> ObjectFrame:
        used = np.asarray(world, np.float64)[np.unique(faces)]
        lo, hi = used.min(axis=0), used.max(axis=0)
        return cls((lo + hi) / 2, HALF_SIZE / max(float((hi - lo).max()) / 2, 1e-12))

    def to_object(self, world: np.ndarray) -> np.ndarray:
        return (np.asarray(world, np.float64) - self.centre) * self.scale

    def matrix(self) -> np.ndarray:
        """4x4 object frame -> world."""
        m = np.eye(4)
        m[:3, :3] /= self.scale
        m[:3, 3] = self.centre
        return m


def winding_numbers(points: torch.Tensor, triangles: torch.Tensor,
                    pairs: int = 2**22) -> torch.Tensor:
    """(n,) generalised winding number of each point (n, 3) in triangles (m, 3, 3): the sum
    of the solid angles they subtend over 4 pi (Van Oosterom and Strackee's formula); about 1
    inside a closed surface, 0 outside, 1/2 on an open one's plane. `pairs` bounds the
    point x triangle products held at once."""
    out = torch.zeros(len(points), dtype=torch.float64, device=points.device)
    per = max(1, pairs // max(len(triangles), 1))
    for i in range(0, len(points), per):
        d = triangles[None] - points[i : i + per, None, None]  # (p, m, 3, 3)
        a, b, c = d.unbind(2)
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = torch.linalg.vecdot(a, torch.cross(b, c, dim=-1))
        den = (la * lb * lc + torch.linalg.vecdot(a, b) * lc + torch.linalg.vecdot(b, c) * la
               + torch.linalg.vecdot(c, a) * lb)
        out[i : i + per] = (2 * torch.atan2(det, den)).sum(1).double() / (4 * math.pi)
    return out


class GridField:
    """Values (R, R, R, C) at the extraction grid's points (field.extract.grid_points) of
    [-bound, bound]^3, read trilinearly at any points."""

    def __init__(self, values: torch.Tensor, bound: float):
        self.volume = values.permute(3, 0, 1, 2)[None].float()  # (1, C, x, y, z)
        self.bound = bound

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # grid_sample's last axis is (W, H, D), here (z, y, x).
        g = (x.to(self.volume) / self.bound).flip(-1).reshape(1, -1, 1, 1, 3)
        v = F.grid_sample(self.volume, g, mode="bilinear", padding_mode="border",
                          align_corners=True)
        return v.reshape(self.volume.shape[1], -1).T


def signed_distance_grid(vertices: np.ndarray, faces: np.ndarray, resolution: int,
                         bound: float, device) -> GridField:
    """The signed distance to the mesh (negative inside) at the grid's points (object frame),
    one channel: read trilinearly, its zero level is the surface to well within a cell, where
    a read of the inside's indicator would round every curved surface inwards.

    The distance is to dense surface points (a quarter cell apart); the sign is the winding
    number's, exact only where it can change: at the grid points within BAND cells of the
    surface. Every other point lies in a region of the grid the surface does not cross, whose
    winding number is one value, taken at a few of its points (their median)."""
    from scipy.spatial import cKDTree

    v, f = decimate(vertices, faces, WINDING_FACES)
    tri = torch.as_tensor(v[f], dtype=torch.float32, device=device)
    cell = 2 * bound / (resolution - 1)
    shape = (resolution,) * 3
    surface = np.concatenate(list(surface_points(v, f, 0.25 * cell)))
    band = np.zeros(shape, bool)
    ijk = np.clip(np.rint((surface + bound) / cell), 0, resolution - 1).astype(np.int64)
    band[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    band = ndimage.binary_dilation(band, np.ones((3, 3, 3), bool), iterations=BAND)
    points = grid_points(bound, resolution, device)
    w = np.zeros(shape, np.float32)
    ids = np.flatnonzero(band)
    w.flat[ids] = _winding_at(points, ids, tri)
    regions, count = ndimage.label(~band)
    flat = regions.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, count + 1))
    last = starts + np.bincount(flat, minlength=count + 1)[1:] - 1
    probe = order[np.minimum(starts[:, None] + np.arange(3), last[:, None])]  # 3 per region
    value = np.median(_winding_at(points, probe.ravel(), tri).reshape(-1, 3), axis=1)
    w.flat[np.flatnonzero(~band)] = np.concatenate([[0.0], value])[flat[~band.ravel()]]
    distance, _ = cKDTree(surface).query(points.cpu().numpy(), workers=-1)
    sdf = np.where(w.ravel() > 0.5, -distance, distance).astype(np.float32)
    return GridField(torch.as_tensor(sdf, device=device).reshape(shape + (1,)), bound)


def _winding_at(points: torch.Tensor, ids: np.ndarray, triangles: torch.Tensor) -> np.ndarray:
    if len(ids) == 0:
        return np.zeros(0, np.float32)
    at = points[torch.as_tensor(ids, device=points.device)]
    return winding_numbers(at, triangles).float().cpu().numpy()


def colour_grid(vertices: np.ndarray, colours: np.ndarray | None, resolution: int,
                bound: float, device) -> GridField | None:
    """The nearest vertex's colour (sRGB in [0, 1], as the images the field's albedo is
    compared with) at the grid's points, or None when the mesh has none."""
    if colours is None:
        return None
    from scipy.spatial import cKDTree

    pts = grid_points(bound, resolution).numpy()
    _, nearest = cKDTree(vertices).query(pts, workers=-1)
    rgb = np.asarray(colours, np.float32)[nearest, :3] / 255.0
    return GridField(torch.as_tensor(rgb, device=device).reshape((resolution,) * 3 + (3,)),
                     bound)


def fit_to_mesh(canonical, vertices: np.ndarray, faces: np.ndarray,
                colours: np.ndarray | None, *, steps: int, points: int,
                resolution: int, edge_cells: float = 2.0, seed: int = 0) -> float:
    """Regress `canonical` onto the mesh (object frame): density from the signed distance
    (sign from the winding number), albedo from `colours` (uint8 (N, 3+)) or grey. Returns
    fit_shape's last error.

    The occupancy regressed is sigmoid(-distance / w), w = `edge_cells` cells of the grid (0:
    the hard inside indicator). A hard step is more than the field can hold: its fit wobbles
    across the surface, and the density's gradient, the renders' normals, with it; a ramp a
    few cells wide is smooth there and still puts the half-opaque level on the surface."""
    device = next(canonical.parameters()).device
    bound = canonical.bound
    distance = signed_distance_grid(vertices, faces, resolution, bound, device)
    colour = colour_grid(vertices, colours, resolution, bound, device)
    width = edge_cells * 2 * bound / (resolution - 1)

    def inside(x):
        d = distance(x)[:, 0]
        return torch.sigmoid(-d / width) if width > 0 else (d < 0).float()

    def albedo(x):
        return colour(x) if colour is not None else torch.full((len(x), 3), GREY,
                                                               device=x.device)

    spacing = 2 * bound / resolution
    near = torch.as_tensor(np.concatenate(list(surface_points(vertices, faces, spacing))),
                           dtype=torch.float32)
    return fit_shape(canonical, inside, near=near, colour=albedo, steps=steps, points=points,
                     log_density=LOG_DENSITY, seed=seed)
