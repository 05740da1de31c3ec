"""Mesh mode in Blender: what is sent (the object's own vertices) and where the result lands
(shape keys on that object, or on a duplicate of it).

The request carries the mesh's own vertices (its shape-key basis, before modifiers) in world
space, so that the result's vertex i is the object's vertex i: shape keys apply before the
modifiers, which keep working. UV layers, materials, vertex groups and modifiers are never
touched; shape keys already there are kept, the new ones come after them.
"""

from __future__ import annotations

import bpy
import numpy as np

from .importer import fps_pair, key_frames

PIN_GROUPS = ("pin", "root")  # a vertex group with one of these names holds the root still


class MeshChanged(Exception):
    """The object is gone or no longer has the vertices the job was sent."""


def basis_coords(obj) -> np.ndarray:
    """(N, 3) float64 object-space positions of the shape-key basis (the mesh if none)."""
    me = obj.data
    n = len(me.vertices)
    co = np.empty(n * 3, np.float32)
    if me.shape_keys is not None:
        me.shape_keys.reference_key.data.foreach_get("co", co)
    else:
        me.vertices.foreach_get("co", co)
    return co.reshape(n, 3).astype(np.float64)


def request_arrays(obj):
    """(world vertices (N, 3), triangles (M, 3), pinned vertex ids) of the object's own mesh;
    n-gons are triangulated for the solver only."""
    me = obj.data
    me.calc_loop_triangles()
    tris = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", tris)
    mw = np.array(obj.matrix_world)
    world = basis_coords(obj) @ mw[:3, :3].T + mw[:3, 3]
    return world, tris.reshape(-1, 3), pinned_ids(obj)


def pinned_ids(obj) -> list[int]:
    group = next((g for g in obj.vertex_groups if g.name.lower() in PIN_GROUPS), None)
    if group is None:
        return []
    gi = group.index
    return [v.index for v in obj.data.vertices
            if any(g.group == gi and g.weight > 0.0 for g in v.groups)]


def duplicate(obj):
    """A copy with its own mesh data, in the same collections, with modifiers, vertex groups,
    materials and UVs."""
    copy = obj.copy()
    copy.data = obj.data.copy()
    copy.name = f"{obj.name} Animate4D"
    for coll in obj.users_collection:
        coll.objects.link(copy)
    return copy


def add_shape_keys(obj, mesh, label: str, *, start_frame: int = 1,
                   set_frame_range: bool = False):
    """Frame k of the result (world space, through its transform) as shape key k of `obj`,
    keyed so that it shows at scene frame start_frame + k."""
    if obj is None or obj.type != "MESH" or len(obj.data.vertices) != mesh.num_vertices:
        have = "gone" if obj is None or obj.type != "MESH" else \
            f"now has {len(obj.data.vertices)} vertices, the result {mesh.num_vertices}"
        raise MeshChanged(have)
    if obj.mode == "EDIT":  # leaving Edit Mode would write its own copy over the new keys
        raise MeshChanged("is in Edit Mode")
    basis = basis_coords(obj)
    t = np.asarray(mesh.transform, np.float64)
    lin = np.linalg.inv(np.array(obj.matrix_world)[:3, :3]) @ t[:3, :3]  # result -> object
    frames = np.asarray(mesh.frames, np.float64)
    if obj.data.shape_keys is None:
        obj.shape_key_add(name="Basis", from_mix=False)
    names = []
    for k in range(len(frames)):
        local = basis + (frames[k] - frames[0]) @ lin.T  # frame 0 is the basis exactly
        kb = obj.shape_key_add(name=f"{label} {k:04d}", from_mix=False)
        kb.data.foreach_set("co", local.astype(np.float32).ravel())
        names.append(kb.name)
    key_frames(obj.data.shape_keys, names, start_frame)
    if set_frame_range:
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = start_frame, start_frame + len(frames) - 1
        scene.render.fps, scene.render.fps_base = fps_pair(float(mesh.fps))
    return obj
