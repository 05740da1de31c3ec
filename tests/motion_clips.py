"""A small result whose motion is known exactly, for the motion edit and poke tests."""

from __future__ import annotations

import numpy as np

from animate4d.protocol import AnimatedMesh


def swaying_sheet(n: int = 6, frames: int = 24, period: float = 24, *, loop: bool = True,
                  transform=None) -> AnimatedMesh:
    """An n x n sheet (x across, z up) swaying in y about its bottom edge with `period` frames,
    and in x at twice that rate."""
    y, x = np.mgrid[0:n, 0:n] / (n - 1)
    rest = np.stack([x.ravel(), np.zeros(n * n), y.ravel()], 1).astype(np.float32)
    q = np.arange(n * n).reshape(n, n)
    a, b, c, d = q[:-1, :-1].ravel(), q[:-1, 1:].ravel(), q[1:, 1:].ravel(), q[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    t = np.arange(frames)[:, None] / period
    moved = np.repeat(rest[None], frames, 0)
    moved[..., 1] += 0.2 * rest[:, 2] ** 2 * np.sin(2 * np.pi * t)
    moved[..., 0] += 0.05 * rest[:, 2] * np.sin(2 * np.pi * 2 * t + 0.5)
    return AnimatedMesh(rest, faces, moved, fps=24.0,
                        transform=np.eye(4) if transform is None else transform,
                        metadata={"loop": loop, "seed": 3})
