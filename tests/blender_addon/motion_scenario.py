"""Runs inside a fresh Blender (bpy) process: the add-on from this checkout, a result imported
as shape keys, then the Result Motion panel's operators as an artist presses them. Writes JSON
observations for test_motion.py."""

import json
import sys
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import blender_addon as addon  # noqa: E402
from animate4d.protocol import dynamics as dy  # noqa: E402
from animate4d.protocol import spectrum as sp  # noqa: E402
from blender_addon.importer import import_animated_mesh  # noqa: E402
from tests.motion_clips import swaying_sheet  # noqa: E402

out_path, blend_path = sys.argv[1:3]
obs = {}
addon.register()
scene = bpy.context.scene
for o in list(scene.objects):
    bpy.data.objects.remove(o)
scene.render.fps, scene.render.fps_base = 24, 1.0

# A 12 x 12 sheet swaying about its bottom edge with a period of 16 frames, 24 frames long: a
# clip that does not loop; turned and scaled, as results are.
n = 12
transform = np.eye(4)
transform[:3, :3] = [[0, -2, 0], [2, 0, 0], [0, 0, 2]]
result = swaying_sheet(n, 24, 16, loop=False, transform=transform)
rest, frames = result.vertices, result.frames
obj = import_animated_mesh(result, "Result", start_frame=5, set_frame_range=True)
bpy.context.view_layer.objects.active = obj
obj.select_set(True)


def played() -> np.ndarray:
    """What the scene shows at each frame of the clip, from the keys' own keying."""
    keys = [k for k in obj.data.shape_keys.key_blocks if k.name.startswith("frame_")]
    dg = bpy.context.evaluated_depsgraph_get()
    out = []
    for k in range(len(keys)):
        scene.frame_set(5 + k)
        ev = obj.evaluated_get(dg)
        me = ev.to_mesh()
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
        out.append(co.reshape(-1, 3))
    return np.stack(out)


def error(want, got):
    return float(np.abs(want.frames - got).max()) if want.frames.shape == got.shape else 1e9


def call(op):
    try:
        return sorted(op())
    except RuntimeError as e:  # an ERROR report: bpy-as-a-module raises it after the operator
        return ["CANCELLED", str(e)]


st = obj.animate4d_motion
obs["panel_polls"] = addon.motion_ui.ANIMATE4D_PT_motion.poll(bpy.context)

# Loop, Amplitude, Speed: re-baked in place.
st.loop, st.amplitude, st.speed = True, 1.5, 2.0
obs["apply"] = call(bpy.ops.animate4d.motion_apply)
want = sp.edit(result, loop=True, amplitude=1.5, speed=2.0)
got = played()
obs["apply_frames"] = [want.num_frames, len(got)]
obs["apply_error"] = error(want, got)
obs["frame_range"] = [scene.frame_start, scene.frame_end]
obs["loop_flag"] = bool(obj["animate4d_loop"])

# Frames: 20 frames of the loop (whole cycles in them), from the source again.
st.frames = 20
call(bpy.ops.animate4d.motion_apply)
want = sp.edit(result, loop=True, amplitude=1.5, speed=2.0, frames=20)
obs["frames_error"] = error(want, played())

# Undoable: Blender pushes an undo step after each press (there is no undo stack to step
# through without a window, so the test checks that the operators ask for one).
obs["undo_options"] = sorted(addon.motion_ui.ANIMATE4D_OT_motion_apply.bl_options
                             & addon.motion_ui.ANIMATE4D_OT_poke.bl_options)

# A vertex group: amplitude 0 where the group is, the motion as it came elsewhere.
vg = obj.vertex_groups.new(name="top")
vg.add([int(i) for i in range(72, 144)], 1.0, "REPLACE")
st.loop, st.amplitude, st.speed, st.frames, st.vertex_group = False, 0.0, 1.0, 0, "top"
call(bpy.ops.animate4d.motion_apply)
got = played()
obs["group_still"] = float(np.abs(got[:, 72:] - rest[72:]).max())
obs["group_rest_error"] = float(np.abs(got[:, :72] - frames[:, :72]).max())
st.vertex_group, st.amplitude = "", 1.0

# Amplitude 1, Speed 1, no loop: the clip as it came.
call(bpy.ops.animate4d.motion_apply)
obs["identity_error"] = error(result, played())

# Poke: the selected vertex, pushed along a world direction.
obj.data.vertices.foreach_set("select", np.arange(n * n) == 137)
st.poke_along_normal, st.poke_direction, st.poke_strength = False, (1.0, 0.0, 0.0), 0.1
st.poke_damping, st.poke_frames = 0.2, 30
obs["poke"] = call(bpy.ops.animate4d.poke)
force = (0.0, -0.1, 0.0)  # world +X is the object's -Y under the turn
want = dy.poke(result, [dy.Poke(137, force)], frames=30, damping=0.2)
got = played()
obs["poke_error"] = error(want, got)
obs["poke_moves"] = float(np.abs(got - rest).max())
# A second poke lands at the current frame and adds to the first.
st.poke_add = True
scene.frame_set(5 + 10)
obj.data.vertices.foreach_set("select", np.arange(n * n) == 140)
call(bpy.ops.animate4d.poke)
want = dy.poke(result, [dy.Poke(137, force), dy.Poke(140, force, 10)], frames=30,
               damping=0.2)
obs["poke2_error"] = error(want, played())

# Edit Mode: the active vertex is the one poked.
st.poke_add = False
bpy.ops.object.mode_set(mode="EDIT")
import bmesh  # noqa: E402

bm = bmesh.from_edit_mesh(obj.data)
for v in bm.verts:
    v.select = False
bm.verts.ensure_lookup_table()
bm.verts[100].select = True
bm.select_history.add(bm.verts[100])
bmesh.update_edit_mesh(obj.data)
obs["edit_mode_poke"] = call(bpy.ops.animate4d.poke)
obs["mode_after"] = obj.mode
obs["edit_mode_pokes"] = [list(p) for p in obj["animate4d_pokes"]]

# Bad input: no vertex selected, a vertex group that is not there.
obj.data.vertices.foreach_set("select", np.zeros(n * n, bool))
obs["no_vertex"] = call(bpy.ops.animate4d.poke)
st.vertex_group = "missing"
obs["no_group"] = call(bpy.ops.animate4d.motion_apply)
st.vertex_group = ""

# Saved and opened again: the source is still there, so the original comes back.
bpy.ops.wm.save_as_mainfile(filepath=blend_path)
bpy.ops.wm.open_mainfile(filepath=blend_path)
obj = bpy.data.objects["Result"]
bpy.context.view_layer.objects.active = obj
scene = bpy.context.scene
obs["source_kept"] = obj.animate4d_motion.source is not None
obs["restore"] = call(bpy.ops.animate4d.motion_restore)
obs["restore_error"] = error(result, played())

Path(out_path).write_text(json.dumps(obs))
print("SCENARIO DONE")
