"""AnimatedMesh: the one result format that the backend, the server and Blender share.

One topology moved frame by frame (so that every frame can be a shape key):
    vertices   (N, 3) float32  rest pose, object frame, Blender axes (Z up)
    faces      (M, 3) uint32   triangles, counter-clockwise seen from outside
    frames     (F, N, 3) float32  vertex positions per frame, object frame
    colors     (N, 4) uint8    optional RGBA vertex colours (sRGB)
    uvs        (N, 2) float32  optional texture coordinates (origin bottom-left, as Blender)
    fps        float           playback rate; frame i plays at time i / fps
    transform  (4, 4) float64  object frame -> Blender world
    metadata   dict            prompt, preset, seed, versions, timings, loop, ... (small)

Every AnimatedMesh is validated when it is made, so code that receives one never rechecks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from . import limits
from .errors import InvalidMeshError, LimitExceededError


@dataclass(eq=False)
class AnimatedMesh:
    vertices: np.ndarray
    faces: np.ndarray
    frames: np.ndarray
    fps: float = 24.0
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vertices = _float_array("vertices", self.vertices, np.float32, (None, 3))
        n = self.vertices.shape[0]
        if n == 0:
            raise InvalidMeshError("vertices is empty: a mesh needs at least one triangle")
        if n > limits.MAX_VERTICES:
            raise LimitExceededError(
                f"{n} vertices is more than the limit of {limits.MAX_VERTICES}",
                hint="decimate the mesh",
            )
        self.faces = _index_array(self.faces, n)
        if self.faces.shape[0] > limits.MAX_FACES:
            raise LimitExceededError(
                f"{self.faces.shape[0]} faces is more than the limit of {limits.MAX_FACES}",
                hint="decimate the mesh",
            )
        self.frames = _float_array("frames", self.frames, np.float32, (None, n, 3))
        f = self.frames.shape[0]
        if f == 0:
            raise InvalidMeshError("frames is empty: an animation needs at least one frame")
        if f > limits.MAX_FRAMES:
            raise LimitExceededError(f"{f} frames is more than the limit of {limits.MAX_FRAMES}")
        if f * n > limits.MAX_FRAME_VERTICES:
            raise LimitExceededError(
                f"{f} frames x {n} vertices is more than the limit of "
                f"{limits.MAX_FRAME_VERTICES} vertex positions",
                hint="use fewer frames or a coarser mesh",
            )
        if self.colors is not None:
            c = np.asarray(self.colors)
            if c.dtype != np.uint8 or c.shape != (n, 4):
                raise InvalidMeshError(
                    f"colors must be uint8 with shape ({n}, 4), got {c.dtype} {c.shape}"
                )
            self.colors = np.ascontiguousarray(c)
        if self.uvs is not None:
            self.uvs = _float_array("uvs", self.uvs, np.float32, (n, 2))
        fps = float(self.fps)
        if not (math.isfinite(fps) and 0.0 < fps <= limits.MAX_FPS):
            raise InvalidMeshError(f"fps must be in (0, {limits.MAX_FPS}], got {self.fps!r}")
        self.fps = fps
        self.transform = _float_array("transform", self.transform, np.float64, (4, 4))
        if not np.allclose(self.transform[3], (0, 0, 0, 1)):
            raise InvalidMeshError("transform's last row must be (0, 0, 0, 1)")
        if not isinstance(self.metadata, dict):
            raise InvalidMeshError("metadata must be a dict")
        try:
            size = len(msgspec.msgpack.encode(self.metadata))
        except (TypeError, msgspec.EncodeError) as e:
            raise InvalidMeshError(
                f"metadata holds a value that cannot be stored: {e}",
                hint="use strings, numbers, booleans, lists and dicts with string keys",
            ) from None
        if size > limits.MAX_METADATA_BYTES:
            raise LimitExceededError(
                f"metadata is {size} bytes, more than the limit of {limits.MAX_METADATA_BYTES}"
            )

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def duration(self) -> float:
        """Seconds the clip lasts: F frames at fps (a loop's last frame leads back to frame 0)."""
        return self.num_frames / self.fps

    def frame_world(self, k: int) -> np.ndarray:
        """Frame k's vertices in Blender world coordinates (float64)."""
        v = self.frames[k].astype(np.float64)
        return v @ self.transform[:3, :3].T + self.transform[:3, 3]

    def equals(self, other: AnimatedMesh) -> bool:
        """Bit-exact equality of every array and field."""
        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

        return (
            same(self.vertices, other.vertices)
            and same(self.faces, other.faces)
            and same(self.frames, other.frames)
            and same(self.colors, other.colors)
            and same(self.uvs, other.uvs)
            and same(self.transform, other.transform)
            and self.fps == other.fps
            and self.metadata == other.metadata
        )


def _float_array(name, value, dtype, shape) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise InvalidMeshError(f"{name} is not an array: {e}") from None
    if a.dtype.kind not in "fiu":
        raise InvalidMeshError(f"{name} must be numeric, got dtype {a.dtype}")
    _check_shape(name, a.shape, shape)
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise InvalidMeshError(f"{name} holds {bad} NaN or infinite value(s)")
    return a


def _index_array(value, n: int) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise InvalidMeshError(f"faces must be integer indices, got dtype {a.dtype}")
    _check_shape("faces", a.shape, (None, 3))
    if a.shape[0] == 0:
        raise InvalidMeshError("faces is empty: a mesh needs at least one triangle")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
        raise InvalidMeshError(
            f"faces index vertices {lo}..{hi}, but there are only {n} vertices (0..{n - 1})"
        )
    return np.ascontiguousarray(a, dtype=np.uint32)


def _check_shape(name, got, want):
    ok = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want, strict=True))
    if not ok:
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise InvalidMeshError(f"{name} must have shape {pretty}, got {tuple(got)}")
