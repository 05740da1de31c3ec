"""The CPU rasterizer's g-buffer (`raster.gbuffer`) on tensors, for many views at once, on
whatever device the tensors are on.

The oracle priors render the ground truth at every SDS step, a view per frame of each clip:
the numpy rasterizer takes ~0.3 s a 256-px view on a CPU core, which would make the paper's
sizes a day's run; on a GPU this takes milliseconds for a whole clip. Same rules as
`raster.gbuffer`: each pixel centre inside a triangle's projection gets the nearest
surface's perspective-correct interpolation of the vertex attributes; edge tests include a
small tolerance so a shared edge is covered by both triangles (the depth test picks one).
"""

from __future__ import annotations

import bisect

import torch

from animate4d.protocol import Camera

from ..field.render import CameraBatch

_NEAR = 1e-6
_EDGE = 1e-5  # barycentric tolerance (float32): shared edges covered twice, never missed
_BATCH = 1 << 22  # candidate pixels per batch: bounds the memory of any set of views


def gbuffer(vertices: torch.Tensor, faces: torch.Tensor, attributes: torch.Tensor,
            cameras: list[Camera]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of B posed copies of one mesh, one camera each (all one resolution).

    vertices (B, N, 3), faces (M, 3) long, attributes (B, N, K), on one device. Returns per
    view and pixel the nearest surface's interpolated attributes (B, H, W, K) (0 where
    nothing is hit), which pixels a surface covers (B, H, W) bool, and its depth along the
    camera's axis (B, H, W), inf where uncovered."""
    w, h = cameras[0].resolution
    if any(c.resolution != cameras[0].resolution for c in cameras):
        raise ValueError("tensor_raster.gbuffer: every camera of one call needs one resolution")
    b, n, _ = vertices.shape
    dev = vertices.device
    cams = CameraBatch(cameras, dev)
    view = torch.arange(b, device=dev).repeat_interleave(n)
    uv, depth = cams.project(view, vertices.reshape(-1, 3).float())
    uv, depth = uv.reshape(b, n, 2), depth.reshape(b, n)

    # Every (view, triangle) wholly in front of the camera, and its pixel bounding box.
    faces = faces.to(dev)
    front = (depth[:, faces] > _NEAR).all(-1)  # (B, M)
    vi, fi = torch.nonzero(front, as_tuple=True)
    corners = faces[fi]  # (T, 3)
    p = uv[vi[:, None], corners]  # (T, 3, 2)
    z = depth[vi[:, None], corners]  # (T, 3)
    lo = (p.amin(1) - 0.5).ceil().clamp(min=0).long()
    hi = torch.minimum((p.amax(1) - 0.5).floor().long(),
                       torch.tensor([w - 1, h - 1], device=dev))
    size = hi - lo + 1
    (x0, y0), (x1, y1), (x2, y2) = p[:, 0].T, p[:, 1].T, p[:, 2].T
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    keep = (size[:, 0] > 0) & (size[:, 1] > 0) & (det.abs() > 1e-12)
    vi, corners, p, z, lo, size, det = (a[keep] for a in (vi, corners, p, z, lo, size, det))

    zbuf = torch.full((b * h * w,), float("inf"), device=dev)
    img = torch.zeros(b * h * w, attributes.shape[-1], device=dev)
    counts = size[:, 0] * size[:, 1]
    ends = torch.cumsum(counts, 0)
    total = len(counts)
    # One batch when every candidate fits (one host sync); else batches of whole triangles.
    if total and int(ends[-1]) <= _BATCH:
        bounds = [(0, total)]
    else:
        ends_host, bounds, start = ends.tolist(), [], 0
        while start < total:
            base = ends_host[start - 1] if start else 0
            stop = max(start + 1, bisect.bisect_right(ends_host, base + _BATCH))
            bounds.append((start, stop))
            start = stop
    for start, stop in bounds:
        base = ends[start - 1] if start else 0
        _fill(slice(start, stop), vi, corners, p, z, lo, size, det, counts, ends, base,
              attributes, zbuf, img, w, h)
    covered = torch.isfinite(zbuf)
    return (img.reshape(b, h, w, -1), covered.reshape(b, h, w), zbuf.reshape(b, h, w))


def _fill(sl, vi, corners, p, z, lo, size, det, counts, ends, base, attributes, zbuf, img,
          w, h):
    """Scan-convert the triangles `sl` into the buffers: where a fragment is nearer than
    what the buffer holds, its depth and interpolated attributes replace it."""
    dev = zbuf.device
    c = counts[sl]
    idx = torch.arange(sl.start, sl.stop, device=dev).repeat_interleave(c)
    local = torch.arange(len(idx), device=dev) - (ends[sl] - c - base).repeat_interleave(c)
    px = lo[idx, 0] + local % size[idx, 0]
    py = lo[idx, 1] + local // size[idx, 0]
    cx, cy = px + 0.5, py + 0.5
    q = p[idx]
    dx, dy, d = cx - q[:, 2, 0], cy - q[:, 2, 1], det[idx]
    l0 = ((q[:, 1, 1] - q[:, 2, 1]) * dx + (q[:, 2, 0] - q[:, 1, 0]) * dy) / d
    l1 = ((q[:, 2, 1] - q[:, 0, 1]) * dx + (q[:, 0, 0] - q[:, 2, 0]) * dy) / d
    l2 = 1.0 - l0 - l1
    inside = (l0 >= -_EDGE) & (l1 >= -_EDGE) & (l2 >= -_EDGE)
    idx, px, py = idx[inside], px[inside], py[inside]
    bary = torch.stack([l0[inside], l1[inside], l2[inside]], 1)
    # Perspective-correct: barycentrics over depth, renormalised.
    persp = bary / z[idx]
    inv_z = persp.sum(1)
    frag_z = 1.0 / inv_z
    pix = (vi[idx] * h + py) * w + px
    # The nearest fragment per pixel in this batch (ties: the last), then against the buffer.
    near = torch.full_like(zbuf, float("inf")).scatter_reduce(0, pix, frag_z, "amin")
    wins = frag_z <= near[pix]
    order = torch.arange(len(pix), device=dev)
    winner = torch.full_like(zbuf, -1, dtype=torch.long).scatter_reduce(
        0, pix[wins], order[wins], "amax")
    chosen = winner[winner >= 0]
    pix_c = pix[chosen]
    nearer = frag_z[chosen] < zbuf[pix_c]
    chosen, pix_c = chosen[nearer], pix_c[nearer]
    weights = persp[chosen] / inv_z[chosen, None]
    attrs = attributes[vi[idx[chosen]][:, None], corners[idx[chosen]]]  # (K', 3, C)
    zbuf[pix_c] = frag_z[chosen]
    img[pix_c] = torch.einsum("ij,ijk->ik", weights, attrs.float())
