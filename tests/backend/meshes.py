"""Test meshes for mesh mode: a tree whose crown rests on its trunk (two separate parts)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

TRUNK_HEIGHT, TRUNK_RADIUS, CROWN_RADIUS = 1.0, 0.1, 0.4


def tree_parts():
    """(trunk, crown) as trimesh meshes in Blender axes (Z up): the crown's lowest point
    touches the trunk's top, and they share no vertex."""
    import trimesh

    trunk = trimesh.creation.cylinder(radius=TRUNK_RADIUS, height=TRUNK_HEIGHT, sections=24)
    trunk = trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(trunk.vertices, trunk.faces,
                                                              0.1), process=False)
    trunk.apply_translation([0, 0, TRUNK_HEIGHT / 2])
    crown = trimesh.creation.icosphere(subdivisions=3, radius=CROWN_RADIUS)
    crown.apply_translation([0, 0, TRUNK_HEIGHT + CROWN_RADIUS * 0.98])
    return trunk, crown


def tree_arrays():
    """Joined (vertices, faces, number of trunk vertices)."""
    trunk, crown = tree_parts()
    v = np.concatenate([trunk.vertices, crown.vertices])
    f = np.concatenate([trunk.faces, crown.faces + len(trunk.vertices)])
    return v, f, len(trunk.vertices)


def write_tree_glb(path: Path) -> Path:
    """The tree as a .glb (Y up, as glTF is): two nodes, each with UVs, normals and one
    textured material; the crown's node carries a translation, the trunk's a rotation."""
    import trimesh
    from PIL import Image

    trunk, crown = tree_parts()
    rng = np.random.default_rng(0)
    tex = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(name="bark", baseColorTexture=tex)
    scene = trimesh.Scene()
    to_y_up = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])
    # The trunk's vertices stay Z up; its node turns them Y up.
    trunk.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(trunk.vertices), 2)),
                                                 material=material)
    scene.add_geometry(trunk, node_name="trunk", transform=to_y_up)
    offset = crown.centroid.copy()
    crown.apply_translation(-offset)
    crown.apply_transform(to_y_up)
    crown.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(crown.vertices), 2)),
                                                 material=material)
    scene.add_geometry(crown, node_name="crown",
                       transform=trimesh.transformations.translation_matrix(to_y_up[:3, :3]
                                                                            @ offset))
    path.write_bytes(scene.export(file_type="glb", include_normals=True))
    return path


def glb_json(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20 : 20 + length])
    (bin_len,) = struct.unpack_from("<I", data, 20 + length)
    return doc, data[28 + length : 28 + length + bin_len]


def accessor_bytes(doc: dict, blob: bytes, index: int) -> bytes:
    """The raw bytes of a tightly packed accessor (as trimesh and we write them)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    size = {5126: 4, 5125: 4, 5123: 2, 5121: 1}[acc["componentType"]] * \
        {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return blob[start : start + size * acc["count"]]
