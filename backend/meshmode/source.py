"""The artist's mesh as mesh mode sees it, whichever way it came (a file, the wire, Blender).

`vertices` are the input's own numbers in its own order (the output keeps them, frame 0 is
them exactly); `to_world` takes them to Blender's world axes (Z up), where the motion is
computed. `faces` are triangles for the solver only: a glTF input keeps its own primitives in
`gltf` and gets its morph targets written back there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from animate4d.protocol import limits
from animate4d.protocol.errors import InvalidMeshError, LimitExceededError

# glTF and most OBJ files are Y up; Blender is Z up: (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)


@dataclass
class MeshSource:
    vertices: np.ndarray  # (N, 3) float64, the input's frame
    faces: np.ndarray  # (M, 3) int64 triangles into vertices
    name: str = "mesh"
    to_world: np.ndarray = field(default_factory=lambda: np.eye(4))
    uvs: np.ndarray | None = None  # (N, 2) float32, Blender's origin (bottom-left)
    colors: np.ndarray | None = None  # (N, 4) uint8 sRGB
    pin: np.ndarray | None = None  # vertex ids held still (the root), or None: found
    gltf: object | None = None  # the parsed glTF it came from (export.GltfDocument)
    views: list = field(default_factory=list)  # renders sent with it (wire.MeshView)

    def world_vertices(self) -> np.ndarray:
        return self.vertices @ self.to_world[:3, :3].T + self.to_world[:3, 3]


def check_mesh(src: MeshSource) -> MeshSource:
    """Bad input as a clear message: what is wrong with the mesh and what to do."""
    v, f = src.vertices, src.faces
    what = f"'{src.name}'"
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise InvalidMeshError(f"{what} has no vertices: it is not a mesh",
                               hint="export the object as a mesh (glb, obj, ply)")
    if len(v) > limits.MAX_VERTICES:
        raise LimitExceededError(f"{what} has {len(v)} vertices; mesh mode takes at most "
                                 f"{limits.MAX_VERTICES}", hint="decimate it first")
    if len(f) > limits.MAX_FACES:
        raise LimitExceededError(f"{what} has {len(f)} triangles; mesh mode takes at most "
                                 f"{limits.MAX_FACES}", hint="decimate it first")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise InvalidMeshError(f"{what} has {bad} vertices with NaN or infinite coordinates",
                               hint="fix or delete them and export again")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise InvalidMeshError(f"{what} has no faces (only loose vertices or edges)",
                               hint="mesh mode animates surfaces: give it a mesh with faces")
    if f.min() < 0 or f.max() >= len(v):
        raise InvalidMeshError(f"{what} has faces that point past its {len(v)} vertices",
                               hint="the file is damaged: export it again")
    used = np.unique(f)
    extent = np.ptp(v[used], axis=0) if len(used) else np.zeros(3)
    if float(extent.max()) <= 1e-9 * max(1.0, float(np.abs(v).max())):
        raise InvalidMeshError(f"{what} has zero size (all its vertices at one point)",
                               hint="scale it up, or check that the right object was exported")
    if src.pin is not None:
        pin = np.asarray(src.pin, np.int64)
        if len(pin) == 0 or pin.min() < 0 or pin.max() >= len(v):
            raise InvalidMeshError(f"the pinned vertex ids must be in 0..{len(v) - 1}",
                                   hint="--pin takes vertex indices of the input mesh")
        src.pin = np.unique(pin)
    return src


def check_frames(src: MeshSource, frames: int) -> None:
    """A clip of `frames` frames of this mesh must fit in one result."""
    n = len(src.vertices)
    if frames * n > limits.MAX_FRAME_VERTICES:
        raise LimitExceededError(
            f"{frames} frames of {n} vertices exceed the limit of "
            f"{limits.MAX_FRAME_VERTICES} vertex positions per result",
            hint=f"ask for at most {limits.MAX_FRAME_VERTICES // n} frames")
