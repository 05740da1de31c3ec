"""Scores of a reconstruction against the truth: surface distances and image agreement.

Chamfer distance is measured between points sampled uniformly (by area) on the two surfaces,
the mean of both directions, as a fraction of the ground truth's bounding-box diagonal (over
the whole clip, so every frame is scored on one scale). Normal consistency is the mean
|n_a . n_b| between each sample's normal and its nearest neighbour's, both ways (1 = perfect).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points uniformly over the triangles' area, with the face normals there."""
    tri = vertices[faces].astype(np.float64)  # (M, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    if area.sum() <= 0:
        raise ValueError("the surface has no area")
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = (tri[pick] * bary[:, :, None]).sum(1)
    normals = cross[pick] / np.maximum(area[pick], 1e-20)[:, None]
    return pts, normals


def chamfer_and_normals(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                        scale: float) -> tuple[float, float]:
    """(Chamfer / scale, normal consistency) between two sampled surfaces (points, normals)."""
    (pa, na), (pb, nb) = a, b
    dab, iab = cKDTree(pb).query(pa)
    dba, iba = cKDTree(pa).query(pb)
    chamfer = 0.5 * (dab.mean() + dba.mean()) / scale
    consistency = 0.5 * (np.abs((na * nb[iab]).sum(1)).mean() +
                         np.abs((nb * na[iba]).sum(1)).mean())
    return float(chamfer), float(consistency)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images with values in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
