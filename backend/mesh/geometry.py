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


# Faces a delivered mesh has at most (the `paper` preset's export): both modes decimate to it, so
# an artist gets the same budget from a preview as from the GPU pipeline.
EXPORT_FACES = 50_000


def decimate(vertices: np.ndarray, faces: np.ndarray,
             target_faces: int = EXPORT_FACES) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) to about `target_faces`; a mesh already
    within it is returned as it is. Vertices float64, faces int64."""
    if len(faces) <= target_faces:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(np.asarray(vertices, np.float32),
                                        np.asarray(faces, np.int32), target_count=target_faces)
    return v.astype(np.float64), f.astype(np.int64)
