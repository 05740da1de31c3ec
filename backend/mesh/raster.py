"""A small CPU rasterizer for previews and checks (numpy + OpenCV, no GL).

`silhouette` fills projected triangles exactly (for coverage/IoU checks); `render` draws a
shaded, depth-ordered image by splatting vertices and face centres (2x2 pixels each), which is
plenty for a preview GIF and costs milliseconds per frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from animate4d.protocol import Camera

from .geometry import vertex_normals

_SHIFT = 4  # sub-pixel bits for cv2 polygon filling


def silhouette(vertices: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W) bool: pixels whose centre is covered by any triangle in front of the camera."""
    w, h = camera.resolution
    uv, depth = camera.project(vertices)
    tri = np.asarray(faces, np.int64)
    tri = tri[np.all(depth[tri] > 1e-6, axis=1)]
    pts = uv[tri]  # (M, 3, 2)
    # A closed surface's outline is the union of its front-facing triangles.
    e1, e2 = pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    keep = (area2 < 0) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < w) & (lo[:, 1] < h)
    # Pixel centres are at +0.5: shift so cv2's integer grid samples the centres.
    fixed = np.rint((pts[keep] - 0.5) * (1 << _SHIFT)).astype(np.int32)
    out = np.zeros((h, w), np.uint8)
    for t in fixed:
        cv2.fillConvexPoly(out, t, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def render(
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None,
    camera: Camera,
    *,
    background=(255, 255, 255),
    light=(0.3, -1.0, 0.6),
) -> np.ndarray:
    """(H, W, 3) uint8 Lambert-shaded image of a vertex-coloured mesh."""
    w, h = camera.resolution
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    n = vertex_normals(v, f)
    col = (np.full((len(v), 3), 200.0) if colors is None
           else np.asarray(colors[:, :3], np.float64))
    centres = v[f].mean(axis=1)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-20)
    pts = np.concatenate([v, centres])
    nrm = np.concatenate([n, fn])
    rgb = np.concatenate([col, col[f].mean(axis=1)])

    to_cam = camera.location - pts
    front = np.einsum("ij,ij->i", nrm, to_cam) > 0
    pts, nrm, rgb = pts[front], nrm[front], rgb[front]
    l_dir = np.asarray(light, np.float64)
    l_dir /= np.linalg.norm(l_dir)
    # Light comes from the camera's side: express it in world space.
    l_world = camera.rotation @ (l_dir * (1, 1, -1))
    shade = 0.35 + 0.65 * np.clip(nrm @ -l_world, 0.0, 1.0)
    rgb = rgb * shade[:, None]

    uv, depth = camera.project(pts)
    ok = depth > 0
    px = np.floor(uv[ok]).astype(np.int64)
    rgb, depth = rgb[ok], depth[ok]
    # Each sample covers a 2x2 block. Samples are written far to near and numpy's indexed
    # assignment keeps the last write, so the nearest sample wins each pixel.
    far_to_near = np.argsort(-depth, kind="stable")
    px, rgb = px[far_to_near], rgb[far_to_near]
    xy = (px[None] + np.array([[[0, 0]], [[1, 0]], [[0, 1]], [[1, 1]]])).transpose(1, 0, 2)
    xy = xy.reshape(-1, 2)  # sample-major: all four pixels of a sample stay together
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    img = np.empty((h * w, 3), np.float64)
    img[:] = background
    img[(xy[inside, 1] * w + xy[inside, 0])] = np.repeat(rgb, 4, axis=0)[inside]
    return np.clip(np.rint(img.reshape(h, w, 3)), 0, 255).astype(np.uint8)
