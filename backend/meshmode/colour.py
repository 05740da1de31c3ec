"""The mesh's colours for the GPU presets: its own vertex colours, else the renders the
Blender extension sends with it (their cameras in world space), else none (grey).

Each vertex takes the mean of the views that see it (in front of the depth buffer, on the
object's alpha), weighted by how squarely it faces each camera; a vertex no view sees takes its
mesh neighbours' colour. Textures are not sampled: the extension's renders already show them.
"""

from __future__ import annotations

import numpy as np

from animate4d.protocol import Camera

from ..field.extract import fill_from_neighbours
from ..mesh import raster
from ..mesh.geometry import vertex_normals
from ..preprocess.image_io import ImageFile, load_image
from .canonical import GREY
from .source import MeshSource

# A vertex counts as seen when it is no farther than this share of the mesh's size behind the
# nearest surface at its pixel (the depth buffer's own rounding, a pixel's footprint).
DEPTH_TOLERANCE = 0.01


def mesh_colours(source: MeshSource) -> np.ndarray | None:
    """(N, 4) uint8 sRGB colours of the source's vertices, or None: nothing to take them from."""
    if source.colors is not None:
        return np.asarray(source.colors, np.uint8)
    if not source.views:
        return None
    world = source.world_vertices()
    return colours_from_views(world, source.faces, [
        (load_image(ImageFile(v.png, f"mesh view {i}")).rgba, Camera.from_dict(v.camera))
        for i, v in enumerate(source.views)])


def colours_from_views(world: np.ndarray, faces: np.ndarray,
                       views: list[tuple[np.ndarray, Camera]]) -> np.ndarray | None:
    """Vertex colours (N, 4) uint8 from RGBA renders (H, W, 4) in [0, 1] and their cameras."""
    n = len(world)
    normals = vertex_normals(world, faces)
    size = float(np.ptp(world, axis=0).max())
    total, weight = np.zeros((n, 3)), np.zeros(n)
    for rgba, camera in views:
        if camera.resolution != (rgba.shape[1], rgba.shape[0]):
            camera = camera.with_resolution((rgba.shape[1], rgba.shape[0]))
        w_px, h_px = camera.resolution
        uv, z = camera.project(world)
        zbuf = raster.depth(world, faces, camera)
        px = np.floor(uv).astype(np.int64)
        on = (z > 0) & (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < w_px) & \
            (px[:, 1] < h_px)
        i = np.flatnonzero(on)
        pix = rgba[px[i, 1], px[i, 0]]
        seen = (z[i] <= zbuf[px[i, 1], px[i, 0]] + DEPTH_TOLERANCE * size) & (pix[:, 3] > 0.5)
        to_cam = camera.location - world[i]
        facing = np.einsum("ij,ij->i", normals[i], to_cam) / np.maximum(
            np.linalg.norm(to_cam, axis=1), 1e-12)
        # Two-sided: a thin sheet seen from behind still shows its colour.
        w = np.where(seen, np.abs(facing) + 1e-3, 0.0)
        total[i] += w[:, None] * pix[:, :3]
        weight[i] += w
    seen_any = weight > 0
    if not seen_any.any():
        return None
    rgb = np.where(seen_any[:, None], total / np.maximum(weight, 1e-12)[:, None], GREY)
    rgb = fill_from_neighbours(np.zeros_like(rgb), faces, rgb, ~seen_any)
    out = np.empty((n, 4), np.uint8)
    out[:, :3] = np.clip(np.rint(rgb * 255), 0, 255)
    out[:, 3] = 255
    return out
