"""Vertex colours by projecting the reference image from the reference camera.

Points on the back project onto the same pixels as the front points before them, so the back
is the front mirrored. Background pixels are first filled with the nearest foreground colour so
that rim vertices, which project onto the mask's edge, never pick up the background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from animate4d.protocol import Camera


def fill_background(rgba: np.ndarray) -> np.ndarray:
    """RGB where every background pixel takes the colour of its nearest foreground pixel."""
    fg = rgba[..., 3] > 0.5
    if fg.all() or not fg.any():
        return rgba[..., :3].copy()
    _, (iy, ix) = ndimage.distance_transform_edt(~fg, return_indices=True)
    return rgba[iy, ix, :3]


def sample_image(points: np.ndarray, camera: Camera, rgb: np.ndarray) -> np.ndarray:
    """(N, 3) bilinear samples of the image rgb (H, W, 3) where `camera` sees `points`."""
    uv, _ = camera.project(points)
    rows, cols = uv[:, 1] - 0.5, uv[:, 0] - 0.5  # pixel centres sit at integer + 0.5
    return np.stack(
        [ndimage.map_coordinates(rgb[..., c], [rows, cols], order=1, mode="nearest")
         for c in range(3)],
        axis=1,
    )


def project_colours(vertices: np.ndarray, camera: Camera, rgba: np.ndarray) -> np.ndarray:
    """(N, 4) uint8 sRGB colours of `vertices` seen by `camera` in the image `rgba` (H, W, 4)."""
    sampled = sample_image(vertices, camera, fill_background(rgba).astype(np.float32))
    colours = np.empty((len(vertices), 4), np.uint8)
    colours[:, :3] = np.clip(np.rint(sampled * 255.0), 0, 255).astype(np.uint8)
    colours[:, 3] = 255
    return colours
