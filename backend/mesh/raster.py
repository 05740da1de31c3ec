"""A small CPU rasterizer for previews and checks (numpy + OpenCV, no GL).

`silhouette` fills projected triangles exactly (for coverage/IoU checks); `render` draws a
shaded image by scan-converting every triangle against a depth buffer: each pixel centre inside
a triangle's projection gets the nearest surface's perspective-correct Gouraud colour, so a
closed mesh shows no pinholes from any side (splatting points left gaps wherever triangles
projected larger than the splats, and the far side showed through them).
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
    """(H, W, 3) uint8 Lambert-shaded image of a vertex-coloured mesh (two-sided: a surface
    seen from behind, inside an open mesh, is lit as if it faced the camera)."""
    w, h = camera.resolution
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    n = vertex_normals(v, f)
    n *= np.where(np.einsum("ij,ij->i", n, camera.location - v) < 0, -1.0, 1.0)[:, None]
    col = (np.full((len(v), 3), 200.0) if colors is None
           else np.asarray(colors[:, :3], np.float64))
    l_dir = np.asarray(light, np.float64)
    l_dir /= np.linalg.norm(l_dir)
    # Light comes from the camera's side: express it in world space.
    l_world = camera.rotation @ (l_dir * (1, 1, -1))
    rgb = col * (0.35 + 0.65 * np.clip(n @ -l_world, 0.0, 1.0))[:, None]

    img, covered, _ = gbuffer(v, f, rgb, camera)
    img[~covered] = background
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def gbuffer(vertices: np.ndarray, faces: np.ndarray, attributes: np.ndarray,
            camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, the nearest surface's perspective-correct interpolation of per-vertex
    `attributes` (N, K): (H, W, K) float64 (0 where nothing is hit), which pixels a surface
    covers (H, W) bool, and its depth along the camera's axis (H, W, inf where uncovered)."""
    w, h = camera.resolution
    v = np.asarray(vertices, np.float64)
    attributes = np.asarray(attributes, np.float64)
    uv, depth = camera.project(v)
    zbuf = np.full(h * w, np.inf)
    img = np.zeros((h * w, attributes.shape[1]), np.float64)
    for pix, z, c in _fragments(uv, depth, np.asarray(faces, np.int64), attributes, w, h):
        # Nearest fragment per pixel in this batch, then against the buffer.
        order = np.lexsort((z, pix))
        pix, z, c = pix[order], z[order], c[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, z, c = pix[first], z[first], c[first]
        nearer = z < zbuf[pix]
        zbuf[pix[nearer]] = z[nearer]
        img[pix[nearer]] = c[nearer]
    return (img.reshape(h, w, -1), np.isfinite(zbuf).reshape(h, w), zbuf.reshape(h, w))


def depth(vertices: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W) float64: the nearest surface's distance along the view axis at each pixel
    centre, inf where no triangle covers it (the z-buffer of `render`)."""
    w, h = camera.resolution
    v = np.asarray(vertices, np.float64)
    uv, z_vert = camera.project(v)
    zbuf = np.full(h * w, np.inf)
    for pix, z, _ in _fragments(uv, z_vert, np.asarray(faces, np.int64), np.zeros((len(v), 1)),
                                w, h):
        np.minimum.at(zbuf, pix, z)
    return zbuf.reshape(h, w)


_NEAR = 1e-6
_BATCH = 1 << 20  # candidate pixels per batch: bounds the memory of any view


def _fragments(uv, depth, faces, rgb, w: int, h: int):
    """Yield (pixel index, depth, colour) for every pixel centre inside a projected triangle,
    in batches. Edge tests include a tiny tolerance, so the shared edge of two triangles is
    covered by both (the depth test picks one) rather than by neither."""
    front = depth > _NEAR
    tri = faces[front[faces[:, 0]] & front[faces[:, 1]] & front[faces[:, 2]]]
    a, b, c = uv[tri[:, 0]], uv[tri[:, 1]], uv[tri[:, 2]]  # elementwise: faster than axis=1
    lo = np.maximum(np.ceil(np.minimum(np.minimum(a, b), c) - 0.5), 0).astype(np.int64)
    hi = np.minimum(np.floor(np.maximum(np.maximum(a, b), c) - 0.5),
                    (w - 1, h - 1)).astype(np.int64)
    size = hi - lo + 1
    (x0, y0), (x1, y1), (x2, y2) = a.T, b.T, c.T
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    keep = (size[:, 0] > 0) & (size[:, 1] > 0) & (np.abs(det) > 1e-12)
    tri, lo, size, det = tri[keep], lo[keep], size[keep], det[keep]
    x0, y0, x1, y1, x2, y2 = (a[keep] for a in (x0, y0, x1, y1, x2, y2))
    counts = size[:, 0] * size[:, 1]
    ends = np.cumsum(counts)
    start = 0
    while start < len(tri):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _BATCH, side="right")))
        sl = slice(start, stop)
        idx = np.repeat(np.arange(start, stop), counts[sl])
        local = np.arange(len(idx)) - np.repeat(ends[sl] - counts[sl] - base, counts[sl])
        px = lo[idx, 0] + local % size[idx, 0]
        py = lo[idx, 1] + local // size[idx, 0]
        cx, cy = px + 0.5, py + 0.5
        dx, dy, d = cx - x2[idx], cy - y2[idx], det[idx]
        l0 = ((y1[idx] - y2[idx]) * dx + (x2[idx] - x1[idx]) * dy) / d
        l1 = ((y2[idx] - y0[idx]) * dx + (x0[idx] - x2[idx]) * dy) / d
        l2 = 1.0 - l0 - l1
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        idx = idx[inside]
        bary = np.stack([l0[inside], l1[inside], l2[inside]], axis=1)
        corners = tri[idx]
        # Perspective-correct: barycentrics over depth, renormalised.
        persp = bary / depth[corners]
        inv_z = persp.sum(axis=1)
        colour = np.einsum("ij,ijk->ik", persp / inv_z[:, None], rgb[corners])
        yield py[inside] * w + px[inside], 1.0 / inv_z, colour
        start = stop
