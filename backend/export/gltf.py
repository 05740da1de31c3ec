"""AnimatedMesh -> binary glTF (.glb) with one morph target per frame.

Frame i is morph target i; an animation of the mesh's morph weights with STEP interpolation
shows target i (weight 1, all others 0) from time i/fps. A looping clip gets one more key at
F/fps back on frame 0, so the last frame is held a full 1/fps and players loop seamlessly; a
non-looping clip holds its last frame there instead.

glTF is Y up, Blender is Z up: positions and normals go through (x, y, z) -> (x, z, -y), and the
object->world transform becomes the node's TRS in glTF axes, so importers (Blender's included)
place the mesh where the result says. COLOR_0 is written linear (glTF's rule) as normalised
uint16, converted from the sRGB vertex colours.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from animate4d.protocol import AnimatedMesh

from ..mesh.geometry import vertex_normals
from ..version import package_version

# Blender (Z up) -> glTF (Y up)
_Z_TO_Y = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)

_FLOAT, _UINT, _USHORT = 5126, 5125, 5123
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


class _Builder:
    """Accumulates buffer views and accessors in one binary buffer."""

    def __init__(self):
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, kind: str, component: int, *, target=None,
            normalized=False, minmax=False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        while len(self.blob) % 4:
            self.blob.append(0)
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.blob += data
        self.views.append(view)
        acc = {
            "bufferView": len(self.views) - 1,
            "componentType": component,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if normalized:
            acc["normalized"] = True
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            acc["min"] = [float(x) for x in flat.min(axis=0)]
            acc["max"] = [float(x) for x in flat.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _trs(m: np.ndarray):
    """Translation, rotation quaternion (x, y, z, w) and scale of an affine 4x4, or None if it
    shears (glTF nodes must be TRS)."""
    t = m[:3, 3]
    a = m[:3, :3]
    scale = np.linalg.norm(a, axis=0)
    if np.any(scale < 1e-12):
        return None
    if np.linalg.det(a) < 0:
        scale[0] = -scale[0]
    r = a / scale
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-6):
        return None
    return t, _quaternion(r), scale


def _quaternion(r: np.ndarray) -> list[float]:
    w = np.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2
    y = np.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2
    z = np.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2
    x = np.copysign(x, r[2, 1] - r[1, 2])
    y = np.copysign(y, r[0, 2] - r[2, 0])
    z = np.copysign(z, r[1, 0] - r[0, 1])
    q = np.array([x, y, z, w])
    return [float(c) for c in q / np.linalg.norm(q)]


def to_glb(mesh: AnimatedMesh) -> bytes:
    f_count = mesh.num_frames
    node: dict = {"mesh": 0, "name": "animate4d"}
    # glTF-axes transform: C T C^-1; the mesh itself goes through C.
    m = np.eye(4)
    m[:3, :3] = _Z_TO_Y @ mesh.transform[:3, :3] @ _Z_TO_Y.T
    m[:3, 3] = _Z_TO_Y @ mesh.transform[:3, 3]
    trs = _trs(m)
    base = mesh.vertices.astype(np.float64)
    frames = mesh.frames.astype(np.float64)
    if trs is None:  # a shearing transform cannot be a node: bake it into the vertices
        lin, off = mesh.transform[:3, :3], mesh.transform[:3, 3]
        base, frames = base @ lin.T + off, frames @ lin.T + off
    else:
        t, q, s = trs
        node.update(translation=[float(x) for x in t], rotation=q, scale=[float(x) for x in s])

    pos = (base @ _Z_TO_Y.T).astype(np.float32)
    pos_frames = (frames @ _Z_TO_Y.T).astype(np.float32)
    nrm = vertex_normals(pos, mesh.faces).astype(np.float32)
    nrm_frames = vertex_normals(pos_frames, mesh.faces).astype(np.float32)

    b = _Builder()
    attributes = {
        "POSITION": b.add(pos, "VEC3", _FLOAT, target=_ARRAY_BUFFER, minmax=True),
        "NORMAL": b.add(nrm, "VEC3", _FLOAT, target=_ARRAY_BUFFER),
    }
    if mesh.colors is not None:
        linear = srgb_to_linear(mesh.colors[:, :3] / 255.0)
        rgba = np.concatenate([linear, mesh.colors[:, 3:] / 255.0], axis=1)
        attributes["COLOR_0"] = b.add(
            np.rint(rgba * 65535).astype(np.uint16), "VEC4", _USHORT,
            target=_ARRAY_BUFFER, normalized=True,
        )
    if mesh.uvs is not None:
        uv = mesh.uvs.copy()
        uv[:, 1] = 1.0 - uv[:, 1]  # glTF's UV origin is the image's top-left
        attributes["TEXCOORD_0"] = b.add(uv, "VEC2", _FLOAT, target=_ARRAY_BUFFER)
    targets = []
    for k in range(f_count):
        dp = (pos_frames[k] - pos).astype(np.float32)
        dn = (nrm_frames[k] - nrm).astype(np.float32)
        targets.append({
            "POSITION": b.add(dp, "VEC3", _FLOAT, target=_ARRAY_BUFFER, minmax=True),
            "NORMAL": b.add(dn, "VEC3", _FLOAT, target=_ARRAY_BUFFER),
        })
    indices = b.add(mesh.faces.reshape(-1), "SCALAR", _UINT, target=_ELEMENT_ARRAY_BUFFER)

    loop = bool(mesh.metadata.get("loop", False))
    times = np.arange(f_count + 1, dtype=np.float32) / np.float32(mesh.fps)
    weights = np.zeros((f_count + 1, f_count), np.float32)
    weights[np.arange(f_count), np.arange(f_count)] = 1.0
    weights[f_count, 0 if loop else f_count - 1] = 1.0
    t_acc = b.add(times, "SCALAR", _FLOAT, minmax=True)
    w_acc = b.add(weights.reshape(-1), "SCALAR", _FLOAT)

    names = [f"frame_{k:04d}" for k in range(f_count)]
    default_weights = [0.0] * f_count
    default_weights[0] = 1.0
    doc = {
        "asset": {"version": "2.0", "generator": f"animate4d {package_version()}"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [node | {"extras": _extras(mesh)}],
        "meshes": [{
            "name": "animate4d",
            "primitives": [{
                "attributes": attributes, "indices": indices, "material": 0,
                "mode": 4, "targets": targets,
            }],
            "weights": default_weights,
            "extras": {"targetNames": names},
        }],
        "materials": [{
            "name": "animate4d_vertex_colour",
            "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                     "roughnessFactor": 0.8},
        }],
        "animations": [{
            "name": "animate4d_motion",
            "samplers": [{"input": t_acc, "output": w_acc, "interpolation": "STEP"}],
            "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}],
        }],
        "buffers": [{"byteLength": len(b.blob)}],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }
    return _pack_glb(doc, bytes(b.blob))


def _extras(mesh: AnimatedMesh) -> dict:
    md = mesh.metadata
    keep = {k: md[k] for k in ("prompt", "preset", "seed", "loop") if k in md}
    return {"animate4d": keep | {"fps": mesh.fps, "frames": mesh.num_frames}}


def _pack_glb(doc: dict, blob: bytes) -> bytes:
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    blob += b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(js), b"JSON"), js,
        struct.pack("<I4s", len(blob), b"BIN\0"), blob,
    ])


def write_glb(mesh: AnimatedMesh, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(to_glb(mesh))
    os.replace(tmp, path)
    return path
