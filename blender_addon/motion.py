"""A result's motion edited in place, with no server: Loop, Amplitude, Speed, Frames and Poke.

A result object is a mesh whose Basis key is the rest pose and whose keys frame_0000.. are its
frames (importer.py). The first edit keeps the clip as it came (the source) in a mesh datablock
of its own, one point attribute per frame, pointed to by the object's motion settings; every
edit starts again from it, so Amplitude 1 and Speed 1 give the original back. The maths is
animate4d.protocol.spectrum and .dynamics, the same as `animate4d edit` and `animate4d poke`.

Plain functions on bpy data: the operators (motion_ui.py) and the tests call them.
"""

from __future__ import annotations

import bpy
import numpy as np

from .deps import dynamics, spectrum
from .engine import UserError
from .importer import key_frames

AnimatedMesh = spectrum.AnimatedMesh

LOOP_PROP = "animate4d_loop"  # set by the importer from the result's metadata
POKES_PROP = "animate4d_pokes"  # [[vertex, fx, fy, fz, frame], ...] of the baked response
FIRST_KEY = "frame_0000"
_NO_FACES = np.zeros((1, 3), np.uint32)  # the edits read only the motion, not the faces


def frame_keys(obj) -> list:
    keys = obj.data.shape_keys.key_blocks if obj and obj.data.shape_keys else []
    return sorted((k for k in keys if k.name.startswith("frame_")), key=lambda k: k.name)


def is_result(obj) -> bool:
    return (obj is not None and obj.type == "MESH" and obj.data.shape_keys is not None
            and FIRST_KEY in obj.data.shape_keys.key_blocks)


def _co(block, n: int) -> np.ndarray:
    co = np.empty(n * 3, np.float32)
    block.data.foreach_get("co", co)
    return co.reshape(n, 3)


def read_clip(obj, fps: float) -> AnimatedMesh:
    """The clip the object's shape keys play now."""
    me = obj.data
    n = len(me.vertices)
    rest = _co(me.shape_keys.reference_key, n)
    frames = np.stack([_co(k, n) for k in frame_keys(obj)])
    return AnimatedMesh(rest, _NO_FACES, frames, fps=fps,
                        metadata={"loop": bool(obj.get(LOOP_PROP, False))})


def _stash(obj, clip: AnimatedMesh):
    me = bpy.data.meshes.new(f"{obj.name} (motion source)")
    me.vertices.add(clip.num_vertices)
    me.vertices.foreach_set("co", clip.vertices.ravel())
    for k in range(clip.num_frames):
        attr = me.attributes.new(f"frame_{k:04d}", "FLOAT_VECTOR", "POINT")
        attr.data.foreach_set("vector", clip.frames[k].ravel())
    me["fps"], me["loop"] = clip.fps, bool(clip.metadata.get("loop"))
    return me


def source_clip(obj, fps: float) -> AnimatedMesh:
    """The clip as it came, kept on the first edit (see the module's docstring)."""
    st = obj.animate4d_motion
    me = st.source
    if me is None or len(me.vertices) != len(obj.data.vertices):
        clip = read_clip(obj, fps)
        st.source = _stash(obj, clip)
        return clip
    n = len(me.vertices)
    names = sorted(a.name for a in me.attributes if a.name.startswith("frame_"))
    frames = np.empty((len(names), n, 3), np.float32)
    for k, name in enumerate(names):
        me.attributes[name].data.foreach_get("vector", frames[k].ravel())
    rest = np.empty(n * 3, np.float32)
    me.vertices.foreach_get("co", rest)
    return AnimatedMesh(rest.reshape(n, 3), _NO_FACES, frames,
                        fps=float(me["fps"]), metadata={"loop": bool(me["loop"])})


def start_frame(obj, scene) -> int:
    """The scene frame that shows frame_0000 (where the importer keyed it)."""
    sk = obj.data.shape_keys
    ad = sk.animation_data
    if ad is not None and ad.action is not None:
        fc = _find_fcurve(ad.action, sk, f'key_blocks["{FIRST_KEY}"].value')
        if fc is not None:
            on = [p.co.x for p in fc.keyframe_points if p.co.y > 0.5]
            if on:
                return round(on[0])
    return scene.frame_start


def _find_fcurve(action, owner, path):
    if hasattr(action, "fcurves"):  # actions before Blender 5
        return action.fcurves.find(path)
    from bpy_extras import anim_utils

    bag = anim_utils.action_get_channelbag_for_slot(action, owner.animation_data.action_slot)
    return None if bag is None else bag.fcurves.find(path)


def bake(obj, clip: AnimatedMesh, scene, start: int) -> None:
    """The object's frame keys become `clip`'s frames, keyed from scene frame `start`."""
    keys = frame_keys(obj)
    f = clip.num_frames
    if len(keys) != f:
        sk = obj.data.shape_keys
        for kb in keys:
            obj.shape_key_remove(kb)
        old = sk.animation_data.action if sk.animation_data else None
        if old is not None:
            sk.animation_data.action = None
            if old.users == 0:
                bpy.data.actions.remove(old)
        keys = [obj.shape_key_add(name=f"frame_{k:04d}", from_mix=False) for k in range(f)]
        key_frames(sk, [kb.name for kb in keys], start)
        if scene.frame_start == start:
            scene.frame_end = start + f - 1
    for k, kb in enumerate(keys):
        kb.data.foreach_set("co", np.ascontiguousarray(clip.frames[k]).ravel())
    obj[LOOP_PROP] = bool(clip.metadata.get("loop"))
    obj.data.update()


def group_weights(obj, name: str) -> np.ndarray:
    vg = obj.vertex_groups.get(name)
    if vg is None:
        raise UserError(f"No vertex group named {name!r} on {obj.name}")
    w = np.zeros(len(obj.data.vertices), np.float64)
    i = vg.index
    for v in obj.data.vertices:
        for g in v.groups:
            if g.group == i:
                w[v.index] = g.weight
    return w


def apply_motion(obj, scene, *, loop: bool, amplitude: float, speed: float, frames: int = 0,
                 vertex_group: str = "") -> AnimatedMesh:
    """Re-bake the keys as the source clip edited (frames 0: the count the edit gives)."""
    fps = scene.render.fps / scene.render.fps_base
    start = start_frame(obj, scene)
    src = source_clip(obj, fps)
    weights = group_weights(obj, vertex_group) if vertex_group else None
    edited = spectrum.edit(src, loop=loop, amplitude=amplitude, weights=weights, speed=speed,
                           frames=frames or None)
    bake(obj, edited, scene, start)
    obj.pop(POKES_PROP, None)
    return edited


def active_vertex(obj) -> int:
    """The active vertex in Edit Mode, else the one selected vertex."""
    if obj.mode == "EDIT":
        import bmesh

        bm = bmesh.from_edit_mesh(obj.data)
        act = bm.select_history.active
        if isinstance(act, bmesh.types.BMVert):
            return act.index
        picked = [v.index for v in bm.verts if v.select]
    else:
        sel = np.zeros(len(obj.data.vertices), bool)
        obj.data.vertices.foreach_get("select", sel)
        picked = np.flatnonzero(sel).tolist()
    if len(picked) != 1:
        raise UserError("Select the vertex to poke (one vertex, or make one active in "
                        "Edit Mode)")
    return picked[0]


def force_in_object(obj, vertex: int, direction, strength: float,
                    along_normal: bool) -> tuple:
    """The poke's force in the object's frame: `strength` along `direction` (world), or into
    the surface at the vertex."""
    if along_normal:
        d = -np.array(obj.data.vertices[vertex].normal, np.float64)
    else:
        m = np.array(obj.matrix_world.to_3x3(), np.float64)
        d = np.linalg.solve(m, np.asarray(direction, np.float64))
    size = np.linalg.norm(d)
    if not size > 0:
        raise UserError("The poke needs a direction")
    return tuple(float(x) for x in d / size * strength)


def poke(obj, scene, vertex: int, force, *, damping: float, frames: int,
         add: bool = False) -> AnimatedMesh:
    """Bake the response to a poke (added to the pokes baked before, at the current frame, when
    `add`); the modes are the source clip's."""
    fps = scene.render.fps / scene.render.fps_base
    start = start_frame(obj, scene)
    src = source_clip(obj, fps)
    earlier = [list(p) for p in obj.get(POKES_PROP, [])] if add else []
    at = float(min(max(scene.frame_current - start, 0), frames - 1)) if earlier else 0.0
    pokes = [*earlier, [vertex, *force, at]]
    clip = dynamics.poke(src, [dynamics.Poke(int(p[0]), tuple(p[1:4]), p[4]) for p in pokes],
                         frames=frames, damping=damping)
    bake(obj, clip, scene, start)
    obj[POKES_PROP] = pokes
    return clip


def restore(obj, scene) -> AnimatedMesh:
    """The source clip back on the keys."""
    fps = scene.render.fps / scene.render.fps_base
    start = start_frame(obj, scene)
    src = source_clip(obj, fps)
    bake(obj, src, scene, start)
    obj.pop(POKES_PROP, None)
    return src
