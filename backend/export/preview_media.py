"""A looping GIF an artist can glance at: the reference view beside a turntable view."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from animate4d.protocol import AnimatedMesh, Camera

from ..jobs.progress import ProgressFn, no_progress
from ..mesh.raster import render
from ..preprocess.framing import CANONICAL_FOV_DEG, CANONICAL_RADIUS

PANEL = 256


def framing(mesh: AnimatedMesh) -> tuple[np.ndarray, float]:
    """Centre and camera distance that keep every frame whole in view: the centre of the
    bounds of the whole motion, and the distance at which the sphere around all frames fits
    the field of view (with a margin), so no motion leaves the frame from any side."""
    shapes = [mesh.vertices, *mesh.frames]  # one frame at a time: long clips are large
    lo = np.min([s.min(axis=0) for s in shapes], axis=0)
    hi = np.max([s.max(axis=0) for s in shapes], axis=0)
    centre = ((lo + hi) / 2).astype(np.float64)
    extent = max(float(np.linalg.norm(s - centre, axis=1).max()) for s in shapes)
    dist = max(CANONICAL_RADIUS, 1.1 * extent / np.sin(np.radians(CANONICAL_FOV_DEG / 2)))
    return centre, dist


def preview_frames(mesh: AnimatedMesh, progress: ProgressFn = no_progress) -> list[np.ndarray]:
    """One (PANEL, 2*PANEL, 3) image per frame: reference view | camera orbiting once."""
    centre, dist = framing(mesh)
    front = Camera.look_at(centre + (0.0, -dist, 0.0), centre, fov_deg=CANONICAL_FOV_DEG,
                           resolution=(PANEL, PANEL))
    out = []
    f = mesh.num_frames
    for k in range(f):
        progress("preview", k, f)
        a = 2 * np.pi * k / f
        orbit = Camera.look_at(
            centre + dist * np.array([np.sin(a), -np.cos(a), 0.25]), centre,
            fov_deg=CANONICAL_FOV_DEG, resolution=(PANEL, PANEL),
        )
        verts = mesh.frames[k]
        left = render(verts, mesh.faces, mesh.colors, front)
        right = render(verts, mesh.faces, mesh.colors, orbit)
        out.append(np.concatenate([left, right], axis=1))
    progress("preview", f, f)
    return out


def preview_png(mesh: AnimatedMesh, size: int = 128) -> bytes:
    """A small PNG of frame 0 from the front: the `preview` event a client shows."""
    import io

    centre, dist = framing(mesh)
    cam = Camera.look_at(centre + (0.0, -dist, 0.0), centre, fov_deg=CANONICAL_FOV_DEG,
                         resolution=(size, size))
    buf = io.BytesIO()
    Image.fromarray(render(mesh.frames[0], mesh.faces, mesh.colors, cam)).save(buf, "PNG")
    return buf.getvalue()


def write_gif(frames: list[np.ndarray], fps: float, path: str | os.PathLike) -> Path:
    path = Path(path)
    images = [Image.fromarray(fr).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
              for fr in frames]
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0, disposal=1)
    os.replace(tmp, path)
    return path
