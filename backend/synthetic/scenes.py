"""Built-in procedural scenes: closed, vertex-coloured meshes moved by known, looping motions.

Each covers a kind of motion the pipeline must handle: `ball` (rigid travel + squash and
stretch), `bend` (a capsule bending like a waving arm: non-rigid, rooted), `twist` (a rounded
box twisting about its axis: large rotations that grow with height). Colours vary smoothly over
the surface so that motion along the surface is visible in the images, not only in outlines.
"""

from __future__ import annotations

import math

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


def _ball(frames: int):
    m = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    rest = m.vertices
    out = []
    for k in range(frames):
        ph = 2 * math.pi * k / frames
        h = 0.25 * abs(math.sin(ph))  # bounce
        squash = 1.0 - 0.25 * max(0.0, math.cos(2 * ph))  # squashed at the ground
        stretch = 1.0 / math.sqrt(squash)
        v = rest * np.array([stretch, stretch, squash])
        v[:, 2] += h - 0.4 * (1 - squash)
        v[:, 0] += 0.15 * math.sin(ph)
        out.append(v)
    return m, np.stack(out)


def _bend(frames: int):
    m = trimesh.creation.capsule(height=1.0, radius=0.18, count=[48, 48])
    m = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(m.vertices, m.faces, 0.04))
    rest = m.vertices
    z = rest[:, 2] + 0.68  # 0 at the root, 1.36 at the tip
    out = []
    for k in range(frames):
        curvature = 0.9 * math.sin(2 * math.pi * k / frames)
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


def _twist(frames: int):
    m = trimesh.creation.box(extents=(0.5, 0.5, 1.0))
    m = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(m.vertices, m.faces, 0.03))
    # Round it: pull the box towards a superellipsoid so its edges are not razor sharp.
    v = m.vertices / np.array([0.25, 0.25, 0.5])
    n = np.linalg.norm(v, ord=8, axis=1, keepdims=True)
    rest = v / n * np.array([0.25, 0.25, 0.5])
    m = trimesh.Trimesh(rest, m.faces)
    out = []
    for k in range(frames):
        a = 1.2 * math.sin(2 * math.pi * k / frames) * (rest[:, 2] + 0.5)
        c, s = np.cos(a), np.sin(a)
        out.append(np.stack([c * rest[:, 0] - s * rest[:, 1], s * rest[:, 0] + c * rest[:, 1],
                             rest[:, 2]], 1))
    return m, np.stack(out)


SCENES = {"ball": _ball, "bend": _bend, "twist": _twist}
MAX_FRAMES = 240


def scene(name: str, frames: int = 16, fps: float = 24.0) -> AnimatedMesh:
    """The named scene as an AnimatedMesh (frame 0 is the rest pose; the clip loops)."""
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; built-in scenes: {', '.join(SCENES)}")
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be within 1..{MAX_FRAMES}")
    mesh, verts = SCENES[name](frames)
    faces = np.asarray(mesh.faces, np.int64)
    rest = np.asarray(mesh.vertices, np.float32)
    return AnimatedMesh(vertices=verts[0].astype(np.float32), faces=faces,
                        frames=verts.astype(np.float32), fps=fps, transform=np.eye(4),
                        colors=_colours(rest, 3.0), metadata={"scene": name})
