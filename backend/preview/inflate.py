"""Inflate a silhouette into a closed, rounded mesh (preview mode's geometry).

Height from a Poisson solve: lap(u) = -4 inside the mask, u = 0 on its border, h = sqrt(u).
For a disc of radius R that is exactly a sphere, and a limb of half-width w gets a round cross
section of about its own width, so thin parts stay thin (a plain distance transform would make
them as deep as the body is wide).

The closed surface is the zero level of F(u, v, w) = U(u, v) - (w / thickness)^2, U = h^2,
over a grid whose (u, v) are the reference view's pixels and whose w is depth towards the
camera; marching cubes gives a watertight mesh, and every vertex is then placed on the ray
through its pixel, so the silhouette seen from the reference camera is the mask, whatever the
depth.
"""

from __future__ import annotations

import mcubes
import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.sparse.linalg import spsolve

from animate4d.protocol import Camera


def poisson_height(mask: np.ndarray) -> np.ndarray:
    """sqrt of the solution of lap(u) = -4 inside `mask` (bool), zero outside; pixel units."""
    inside = np.asarray(mask, bool).copy()
    inside[[0, -1], :] = False
    inside[:, [0, -1]] = False
    idx = -np.ones(inside.shape, np.int64)
    n = int(inside.sum())
    if n == 0:
        return np.zeros(inside.shape, np.float64)
    idx[inside] = np.arange(n)
    rows, cols = np.nonzero(inside)
    me = idx[rows, cols]
    ii, jj = [me], [me]
    vals = [np.full(n, 4.0)]
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nb = idx[rows + dr, cols + dc]
        ok = nb >= 0
        ii.append(me[ok])
        jj.append(nb[ok])
        vals.append(np.full(int(ok.sum()), -1.0))
    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(ii), np.concatenate(jj))), shape=(n, n)
    )
    u = spsolve(a, np.full(n, 4.0))
    out = np.zeros(inside.shape, np.float64)
    out[inside] = np.sqrt(np.maximum(u, 0.0))
    return out


def inflation_potential(mask: np.ndarray, smooth_px: float = 1.5) -> np.ndarray:
    """U with the surface at w = +-thickness * sqrt(U): the Poisson solution inside, continued
    outside with the slope it has at the nearest inside pixel.

    U is nearly linear across the outline (sqrt(U) is not), so blurring it smooths the pixel
    staircase away without moving the outline.
    """
    m = np.asarray(mask, bool)
    u = poisson_height(m) ** 2
    gy, gx = np.gradient(u)
    slope = np.hypot(gx, gy)
    dist_out, (iy, ix) = ndimage.distance_transform_edt(~m, return_indices=True)
    field = np.where(m, u, -np.maximum(slope[iy, ix], 1.0) * dist_out)
    return ndimage.gaussian_filter(field, smooth_px) if smooth_px > 0 else field


PAD = 3  # pixels around the mask, so the surface closes inside the grid


class InflatedShape:
    """The inflated silhouette as an implicit function of 3D points: F(x) = U(u, v) -
    (w / thickness)^2, positive inside; the surface `inflate` polygonises. The static stage
    can start from it (fitting the canonical field to F > 0)."""

    def __init__(self, mask: np.ndarray, camera: Camera, *, thickness: float = 1.0):
        if camera.resolution != (mask.shape[1], mask.shape[0]):
            raise ValueError("mask and camera resolution differ")
        self.camera, self.thickness = camera, thickness
        self.potential = inflation_potential(np.pad(np.asarray(mask, bool), PAD))
        self.centre_dist = float(np.linalg.norm(camera.location))
        # World units per pixel at the centre plane (depth is in pixels there).
        self.pixel_size = self.centre_dist / camera.focal_px

    def __call__(self, points: np.ndarray) -> np.ndarray:
        uv, depth = self.camera.project(points)
        w_px = (self.centre_dist - depth) / self.pixel_size
        rows, cols = uv[:, 1] - 0.5 + PAD, uv[:, 0] - 0.5 + PAD  # grid index of a pixel
        u = ndimage.map_coordinates(self.potential, [rows, cols], order=1, mode="nearest")
        return u - (w_px / self.thickness) ** 2


def inflate(mask: np.ndarray, camera: Camera, *, thickness: float = 1.0) -> tuple:
    """Closed mesh (vertices (N,3) float64 in world/object frame, faces (M,3) int64).

    `mask` is (S, S) bool in the reference view of `camera` (resolution S x S). Depth is in
    pixels at the object's centre plane, which lies at the camera's distance to the origin.
    """
    shape = InflatedShape(mask, camera, thickness=thickness)
    pad, potential = PAD, shape.potential
    k = int(np.ceil(thickness * np.sqrt(max(1.0, potential.max())))) + 2
    w = np.arange(-k, k + 1, dtype=np.float64)
    volume = potential[:, :, None] - (w / thickness)[None, None, :] ** 2
    verts, faces = mcubes.marching_cubes(volume, 0.0)
    v_px = verts[:, 0] - pad + 0.5
    u_px = verts[:, 1] - pad + 0.5
    w_px = verts[:, 2] - k

    depth = shape.centre_dist - w_px * shape.pixel_size
    cx, cy = camera.principal_point
    f = camera.focal_px
    cam_pts = np.stack([(u_px - cx) / f * depth, -(v_px - cy) / f * depth, -depth], axis=1)
    world = camera.camera_to_world(cam_pts)
    faces = faces.astype(np.int64)
    if signed_volume(world, faces) < 0:
        faces = faces[:, ::-1].copy()
    return world, faces


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
