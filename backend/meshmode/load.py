"""Mesh mode's inputs: a file (.glb, .gltf, .obj, .ply, .a4d) or the wire's mesh request.

glTF is read by gltf_io (so that its materials and UVs come back untouched); OBJ and PLY by
trimesh, without merging or reordering vertices (an OBJ corner with its own UV or normal is
its own vertex, as every renderer stores it); .a4d by the protocol, in its object frame with
its transform. Several objects in one file are joined.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from animate4d.protocol import a4d, arrays, limits, wire
from animate4d.protocol.errors import FileFormatError, InvalidMeshError, LimitExceededError

from .gltf_io import read_gltf
from .source import Y_UP_TO_Z_UP, MeshSource, check_mesh

FORMATS = (".glb", ".gltf", ".obj", ".ply", ".a4d")
# The up axis OBJ and PLY are usually written with (Blender's exporters' defaults).
DEFAULT_UP = {".obj": "y", ".ply": "z"}


def is_mesh_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in FORMATS


def load_mesh(path: str | os.PathLike, *, up: str | None = None,
              pin: list[int] | None = None) -> MeshSource:
    """The mesh in `path`, checked; `up` ('y' or 'z') overrides the usual up axis of OBJ and
    PLY (glTF's and .a4d's axes are fixed by their specifications); `pin`: vertex ids that
    stay still."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise FileFormatError(f"{path.name}: mesh mode reads {', '.join(FORMATS)}",
                              hint="export the mesh in one of these formats")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {path}: {e.strerror}") from None
    if size > limits.MAX_MESH_FILE_BYTES:
        raise LimitExceededError(f"{path.name} is {size} bytes; mesh mode reads files up to "
                                 f"{limits.MAX_MESH_FILE_BYTES}", hint="decimate it first")
    if up is not None and up not in ("y", "z"):
        raise FileFormatError(f"--up must be y or z, not {up!r}")
    if ext in (".glb", ".gltf"):
        src = _from_gltf(path)
    elif ext == ".a4d":
        src = _from_a4d(path)
    else:
        src = _from_trimesh(path)
    if ext in (".obj", ".ply"):
        src.to_world = Y_UP_TO_Z_UP.copy() if (up or DEFAULT_UP[ext]) == "y" else np.eye(4)
    if pin:
        src.pin = np.asarray(pin, np.int64)
    return check_mesh(src)


def from_wire(mesh: wire.MeshInput, name: str = "mesh") -> MeshSource:
    """The wire's mesh request: vertices in Blender world space, triangles, pinned ids, and
    the renders sent with it (decoded only by the presets that colour from them)."""
    v = arrays.unpack(mesh.vertices, "<f4", name="mesh.vertices")
    f = arrays.unpack(mesh.faces, "<u4", name="mesh.faces")
    if v.ndim != 2 or v.shape[-1:] != (3,) or f.ndim != 2 or f.shape[-1:] != (3,):
        raise InvalidMeshError(f"mesh mode: vertices must be (N, 3) and faces (M, 3), got "
                               f"{list(v.shape)} and {list(f.shape)}")
    pin = np.asarray(mesh.pin, np.int64) if mesh.pin else None
    return check_mesh(MeshSource(v.astype(np.float64), f.astype(np.int64), name=name,
                                 pin=pin, views=list(mesh.views)))


def _from_gltf(path: Path) -> MeshSource:
    g = read_gltf(path.read_bytes(), path.name, path.parent)
    v, f, uvs = g.joined()
    return MeshSource(v, f, name=path.name, to_world=Y_UP_TO_Z_UP.copy(), uvs=uvs, gltf=g)


def _from_a4d(path: Path) -> MeshSource:
    m = a4d.load(path)
    return MeshSource(m.vertices.astype(np.float64), m.faces.astype(np.int64), name=path.name,
                      to_world=np.asarray(m.transform, np.float64), uvs=m.uvs, colors=m.colors)


def _from_trimesh(path: Path) -> MeshSource:
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as e:  # trimesh raises many kinds for a bad file
        raise FileFormatError(f"{path.name} cannot be read as a mesh ({type(e).__name__}: "
                              f"{str(e)[:200]})", hint="export it again") from None
    parts = list(loaded.dump()) if isinstance(loaded, trimesh.Scene) else [loaded]
    meshes = [p for p in parts if isinstance(p, trimesh.Trimesh)]
    if not meshes:
        kinds = sorted({type(p).__name__ for p in parts}) or ["nothing"]
        raise InvalidMeshError(f"{path.name} holds no faces ({', '.join(kinds)})",
                               hint="mesh mode animates surfaces: give it a mesh with faces")
    verts, faces, uvs, colours = [], [], [], []
    n = 0
    for m in meshes:
        verts.append(np.asarray(m.vertices, np.float64))
        faces.append(np.asarray(m.faces, np.int64) + n)
        uv = getattr(m.visual, "uv", None)
        uvs.append(None if uv is None or len(uv) != len(m.vertices) else
                   np.asarray(uv, np.float32)[:, :2])
        vc = None
        if getattr(m.visual, "kind", None) == "vertex":
            vc = np.asarray(m.visual.vertex_colors, np.uint8)
        colours.append(vc)
        n += len(m.vertices)
    return MeshSource(
        np.concatenate(verts), np.concatenate(faces), name=path.name,
        uvs=np.concatenate(uvs) if all(u is not None for u in uvs) else None,
        colors=np.concatenate(colours) if all(c is not None for c in colours) else None)
