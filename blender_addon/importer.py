"""An AnimatedMesh becomes one Blender object whose frames are shape keys.

Blender-facing only: the format logic lives in animate4d.protocol. Works on anything with the
AnimatedMesh fields (vertices, faces, frames, colors, fps, transform), so it runs in the
extension and in benchmarks alike.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix


def import_animated_mesh(mesh, name: str = "Animate4D", *, collection=None,
                         start_frame: int = 1, set_frame_range: bool = False):
    """Create the object; frame k of the result shows at scene frame start_frame + k."""
    n, f = len(mesh.vertices), len(mesh.frames)
    me = bpy.data.meshes.new(name)
    me.vertices.add(n)
    me.vertices.foreach_set("co", np.ascontiguousarray(mesh.vertices, np.float32).ravel())
    faces = np.ascontiguousarray(mesh.faces, np.int32)
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    me.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
    me.update(calc_edges=True)
    me.validate(clean_customdata=False)

    if mesh.colors is not None:
        attr = me.color_attributes.new("Color", "BYTE_COLOR", "POINT")
        # BYTE_COLOR stores sRGB; `color_srgb` takes sRGB floats as the file has them.
        attr.data.foreach_set("color_srgb", (mesh.colors.astype(np.float32) / 255.0).ravel())
        me.materials.append(_vertex_colour_material())

    obj = bpy.data.objects.new(name, me)
    (collection or bpy.context.scene.collection).objects.link(obj)
    # mathutils.Matrix reads rows; a plain nested list would be taken as columns.
    obj.matrix_world = Matrix(np.asarray(mesh.transform, float).tolist())

    obj["animate4d_loop"] = bool(mesh.metadata.get("loop", False))  # for motion.py's edits
    obj.shape_key_add(name="Basis", from_mix=False)
    names = []
    for k in range(f):
        kb = obj.shape_key_add(name=f"frame_{k:04d}", from_mix=False)
        kb.data.foreach_set("co", np.ascontiguousarray(mesh.frames[k], np.float32).ravel())
        names.append(kb.name)
    key_frames(me.shape_keys, names, start_frame)
    if set_frame_range:
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = start_frame, start_frame + f - 1
        fps = float(mesh.fps)
        scene.render.fps, scene.render.fps_base = fps_pair(fps)
    return obj


def import_as_cache(mesh, abc_path: str, name: str = "Animate4D", *, collection=None,
                    start_frame: int = 1, set_frame_range: bool = False):
    """A long clip as an object whose frames stream from an Alembic file (`abc_path`,
    written here) through a Mesh Sequence Cache modifier, so that the .blend does not hold
    every frame as a shape key. Frame k shows at scene frame start_frame + k, as with
    `import_animated_mesh`; the object has no shape keys (the motion edits need them)."""
    keyed = import_animated_mesh(mesh, name=name, collection=collection,
                                 start_frame=start_frame, set_frame_range=set_frame_range)
    layer = bpy.context.view_layer
    selected, active = [o for o in layer.objects if o.select_get()], layer.objects.active
    try:
        for o in layer.objects:
            o.select_set(o == keyed)
        layer.objects.active = keyed
        end = start_frame + len(mesh.frames) - 1
        bpy.ops.wm.alembic_export(filepath=abc_path, selected=True, start=start_frame,
                                  end=end, vcolors=mesh.colors is not None,
                                  as_background_job=False)
        before = set(bpy.data.objects)
        bpy.ops.wm.alembic_import(filepath=abc_path, set_frame_range=False,
                                  as_background_job=False)
        (obj,) = [o for o in bpy.data.objects if o not in before]
    finally:
        data, shape_keys = keyed.data, keyed.data.shape_keys
        action = shape_keys.animation_data.action if shape_keys.animation_data else None
        bpy.data.objects.remove(keyed)
        bpy.data.meshes.remove(data)
        if action is not None and action.users == 0:
            bpy.data.actions.remove(action)
        for o in selected:
            if o.name in layer.objects:
                o.select_set(True)
        if active is not None and active.name in layer.objects:
            layer.objects.active = active
    for c in list(obj.users_collection):
        c.objects.unlink(obj)
    (collection or bpy.context.scene.collection).objects.link(obj)
    obj.name = obj.data.name = name
    if mesh.colors is not None:
        obj.data.materials.append(_vertex_colour_material())
    return obj


def key_frames(shape_keys, names: list[str], start: int) -> None:
    """Key names[k] is 1 on frame start + k and 0 on its neighbours, with constant
    interpolation; an action the keys already have is kept and added to."""
    shape_keys.use_relative = True
    anim = shape_keys.animation_data_create()
    action = anim.action
    if action is None:
        action = bpy.data.actions.new(f"{shape_keys.user.name}_frames")
        anim.action = action
    f = len(names)
    for k in range(f):
        frames = [start + k - 1, start + k, start + k + 1] if k > 0 else [start + k,
                                                                           start + k + 1]
        values = [0.0, 1.0, 0.0] if k > 0 else [1.0, 0.0]
        path = f'key_blocks["{names[k]}"].value'
        fc = _fcurve(action, shape_keys, path)
        fc.keyframe_points.add(len(frames))
        fc.keyframe_points.foreach_set(
            "co", np.array([[x, y] for x, y in zip(frames, values, strict=True)],
                           np.float32).ravel())
        fc.keyframe_points.foreach_set(
            "interpolation", np.full(len(frames), _CONSTANT, np.int32))
        fc.update()


_CONSTANT = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["CONSTANT"].value


def _fcurve(action, owner, path):
    """An F-curve on `action` (Blender 5's layered actions and the older flat ones)."""
    if hasattr(action, "fcurve_ensure_for_datablock"):
        return action.fcurve_ensure_for_datablock(owner, path)
    return action.fcurves.new(path)


def fps_pair(fps: float) -> tuple[int, float]:
    whole = round(fps)
    return (whole, 1.0) if abs(whole - fps) < 1e-6 else (max(1, round(fps * 1.001)), 1.001)


def _vertex_colour_material():
    mat = bpy.data.materials.get("Animate4D vertex colour")
    if mat is not None:
        return mat
    mat = bpy.data.materials.new("Animate4D vertex colour")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attr = nodes.new("ShaderNodeVertexColor")
    attr.layer_name = "Color"
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return mat
