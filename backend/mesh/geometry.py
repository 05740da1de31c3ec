"""Small mesh maths shared by export, rendering, preview and extraction (numpy only)."""

from __future__ import annotations

import numpy as np


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of (N, 3) or (F, N, 3) vertices, float64.

    Vertices that belong to no face (or only to degenerate ones) get +Z.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    batch = v.reshape(-1, *v.shape[-2:])
    out = np.zeros_like(batch)
    corner = f.reshape(-1)
    for k, vk in enumerate(batch):
        a, b, c = vk[f[:, 0]], vk[f[:, 1]], vk[f[:, 2]]
        fn = np.cross(b - a, c - a)  # its length is twice the area: area weighting for free
        for axis in range(3):
            out[k, :, axis] = np.bincount(
                corner, weights=np.repeat(fn[:, axis], 3), minlength=len(vk)
            )
    length = np.linalg.norm(out, axis=-1, keepdims=True)
    ok = length[..., 0] > 1e-20
    out[ok] /= length[ok]
    out[~ok] = (0.0, 0.0, 1.0)
    return out.reshape(v.shape)


SURFACE_CHUNK = 1 << 21  # surface points made at a time (bounds the memory)


def surface_points(v: np.ndarray, faces: np.ndarray, spacing: float):
    """Points on every triangle no farther apart than `spacing`, in bounded chunks."""
    yield v
    tri = v[faces]
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    n = np.clip(np.ceil(edges / spacing), 1, 256).astype(np.int64)
    for k in np.unique(n[n > 1]):
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = (i + j) <= k
        a, b = i[keep] / k, j[keep] / k
        bary = np.stack([1 - a - b, a, b], axis=1)  # (P, 3)
        sel = tri[n == k]
        per = max(1, SURFACE_CHUNK // len(bary))
        for s in range(0, len(sel), per):
            yield np.einsum("pw,twc->tpc", bary, sel[s : s + per]).reshape(-1, 3)
    yield tri.mean(axis=1)


# Faces a delivered mesh has at most (the `paper` preset's export): both modes decimate to it, so
# an artist gets the same budget from a preview as from the GPU pipeline.
EXPORT_FACES = 50_000


def decimate(vertices: np.ndarray, faces: np.ndarray,
             target_faces: int = EXPORT_FACES) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) to about `target_faces`, then
    `drop_duplicate_faces` (simplification can fold a thin part into back-to-back twins).
    Vertices float64, faces int64."""
    if len(faces) > target_faces:
        import fast_simplification

        vertices, faces = fast_simplification.simplify(
            np.asarray(vertices, np.float32), np.asarray(faces, np.int32),
            target_count=target_faces)
    return drop_duplicate_faces(np.asarray(vertices, np.float64), np.asarray(faces, np.int64))


def drop_duplicate_faces(vertices: np.ndarray,
                         faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Without degenerate faces (a corner repeated), back-to-back pairs (the same three
    vertices, opposite windings: both go, as they enclose nothing) and repeats (one kept), and
    without the vertices no face uses any more. Each such pair makes its three edges
    non-manifold, which Blender's and most tools' mesh checks flag."""
    f = np.asarray(faces, np.int64)
    a, b, c = f.T
    f = f[(a != b) & (b != c) & (c != a)]
    if len(f) == 0:
        return np.asarray(vertices)[:0], f
    key = np.sort(f, axis=1)
    # A face is "even" when it is a rotation of its sorted corners.
    even = ((f[:, 0] < f[:, 1]).astype(int) + (f[:, 1] < f[:, 2]) + (f[:, 2] < f[:, 0])) == 2
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    net = np.bincount(group, weights=np.where(even, 1.0, -1.0))
    # Per group: opposite windings cancel; one face of the winding left over (if any) stays.
    cand = np.flatnonzero((net[group] != 0) & (even == (net[group] > 0)))
    _, first = np.unique(group[cand], return_index=True)
    kept = f[np.sort(cand[first])]
    used = np.unique(kept)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return np.asarray(vertices)[used], remap[kept]
