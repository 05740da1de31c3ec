"""Built-in procedural scenes: closed, vertex-coloured meshes moved by known, looping motions.

Each covers a kind of motion the pipeline must handle: `ball` (rigid travel + squash and
stretch), `bend` (a capsule bending like a waving arm: non-rigid, rooted), `twist` (a rounded
box twisting about its axis: large rotations that grow with height), `lift` (the capsule
bending one way only, straight at the start and bent at the end: a motion that does not loop,
so a clip taught backwards shows). Colours vary smoothly over the surface so that motion along
the surface is visible in the images, not only in outlines.

Each motion is a function of the clip's time t in [0, 1] (`Motion`); a clip of F frames shows
times k / F.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

from animate4d.protocol import AnimatedMesh


def _colours(rest: np.ndarray, freq: float) -> np.ndarray:
    """Smooth bands over the surface (RGBA uint8)."""
    p = rest * freq
    rgb = 0.5 + 0.4 * np.stack([np.sin(p[:, 2] * 2.0 + 0.3), np.sin(p[:, 0] * 2.0 + 1.7),
                                np.cos(p[:, 1] * 2.0 + p[:, 2])], 1)
    out = np.empty((len(rest), 4), np.uint8)
    out[:, :3] = np.clip(np.rint(rgb * 255), 0, 255)
    out[:, 3] = 255
    return out


def _ball(times):
    m = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    rest = m.vertices
    out = []
    for t in times:
        ph = 2 * math.pi * t
        h = 0.25 * abs(math.sin(ph))  # bounce
        squash = 1.0 - 0.25 * max(0.0, math.cos(2 * ph))  # squashed at the ground
        stretch = 1.0 / math.sqrt(squash)
        v = rest * np.array([stretch, stretch, squash])
        v[:, 2] += h - 0.4 * (1 - squash)
        v[:, 0] += 0.15 * math.sin(ph)
        out.append(v)
    return m, np.stack(out)


def _bend(times):
    return _bent_capsule([0.9 * math.sin(2 * math.pi * t) for t in times])


def _lift(times):
    # Smoothstep from straight to bent: starts and ends at rest, never comes back.
    return _bent_capsule([1.2 * t * t * (3 - 2 * t) for t in times])


def _bent_capsule(curvatures):
    m = trimesh.creation.capsule(height=1.0, radius=0.18, count=[48, 48])
    m = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(m.vertices, m.faces, 0.04))
    rest = m.vertices
    z = rest[:, 2] + 0.68  # 0 at the root, 1.36 at the tip
    out = []
    for curvature in curvatures:
        # Bend the axis into a circular arc of the given curvature, in the XZ plane.
        ang = curvature * z
        if abs(curvature) < 1e-6:
            v = rest.copy()
        else:
            r = 1.0 / curvature
            x = rest[:, 0]
            v = np.stack([r - (r - x) * np.cos(ang), rest[:, 1], (r - x) * np.sin(ang)], 1)
            v[:, 2] -= 0.68
        out.append(v)
    return m, np.stack(out)


def _twist(times):
    m = trimesh.creation.box(extents=(0.5, 0.5, 1.0))
    m = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(m.vertices, m.faces, 0.03))
    # Round it: pull the box towards a superellipsoid so its edges are not razor sharp.
    v = m.vertices / np.array([0.25, 0.25, 0.5])
    n = np.linalg.norm(v, ord=8, axis=1, keepdims=True)
    rest = v / n * np.array([0.25, 0.25, 0.5])
    m = trimesh.Trimesh(rest, m.faces)
    out = []
    for t in times:
        a = 1.2 * math.sin(2 * math.pi * t) * (rest[:, 2] + 0.5)
        c, s = np.cos(a), np.sin(a)
        out.append(np.stack([c * rest[:, 0] - s * rest[:, 1], s * rest[:, 0] + c * rest[:, 1],
                             rest[:, 2]], 1))
    return m, np.stack(out)


SCENES = {"ball": _ball, "bend": _bend, "twist": _twist, "lift": _lift}
# The scenes whose motion comes back to the start at t = 1.
LOOPING = ("ball", "bend", "twist")
MAX_FRAMES = 240


@dataclass(frozen=True)
class Motion:
    """A scene as a function of time: faces, per-vertex colours, and `at(times)` (T,) ->
    vertex positions (T, N, 3) for times in [0, 1]."""

    name: str
    faces: np.ndarray
    colors: np.ndarray
    at: Callable[[np.ndarray], np.ndarray]
    loops: bool


def motion(name: str) -> Motion:
    """The named scene's motion, at any times."""
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; built-in scenes: {', '.join(SCENES)}")
    mesh, rest = SCENES[name]([0.0])
    faces = np.asarray(mesh.faces, np.int64)
    colours = _colours(np.asarray(mesh.vertices, np.float32), 3.0)

    def at(times):
        return np.asarray(SCENES[name]([float(t) for t in times])[1], np.float32)

    return Motion(name, faces, colours, at, name in LOOPING)


def scene(name: str, frames: int = 16, fps: float = 24.0) -> AnimatedMesh:
    """The named scene as an AnimatedMesh (frame 0 is the rest pose; frame k shows time
    k / frames)."""
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be within 1..{MAX_FRAMES}")
    m = motion(name)
    verts = m.at(np.arange(frames) / frames)
    return AnimatedMesh(vertices=verts[0], faces=m.faces, frames=verts, fps=fps,
                        transform=np.eye(4), colors=m.colors,
                        metadata={"scene": name, "loop": m.loops})
