"""Checks shared by backend tests."""

from __future__ import annotations

import numpy as np

from animate4d.backend.mesh.raster import iou, silhouette
from animate4d.protocol import AnimatedMesh, Camera


def reference_iou(mesh: AnimatedMesh, mask: np.ndarray, camera: Camera | None = None) -> float:
    """IoU of frame 0 (in world, through the result's transform) seen by the reference camera
    recorded in the result, against the input's foreground mask."""
    camera = camera or Camera.from_dict(mesh.metadata["reference_camera"])
    return iou(silhouette(mesh.frame_world(0), mesh.faces, camera), mask)


def edges_are_manifold(faces: np.ndarray) -> bool:
    """Every undirected edge is shared by exactly two faces, in opposite directions."""
    f = np.asarray(faces, np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = np.unique(directed, axis=0, return_counts=True)
    if counts.max() > 1:  # the same directed edge twice: inconsistent winding or non-manifold
        return False
    undirected = np.sort(directed, axis=1)
    _, counts = np.unique(undirected, axis=0, return_counts=True)
    return bool(np.all(counts == 2))
