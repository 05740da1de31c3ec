"""Runs inside a fresh Blender (bpy) process: install the built extension and use it like an
artist would, against a live server. Prints one JSON line of observations for the test."""

import json
import os
import sys
import time
import types
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

zip_path, server, image_path, out_path, blend_path, models_dir, local_port = sys.argv[1:8]
obs = {}


def pump(cond, timeout=90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        engine.drain()
        if cond():
            return True
        time.sleep(0.05)
    return False


r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                             enable_on_install=True)
obs["install"] = sorted(r)
pkg = "bl_ext.user_default.animate4d"
mod = sys.modules[pkg]
engine = mod.engine
obs["protocol_from"] = mod.deps.client.__name__
prefs = bpy.context.preferences.addons[pkg].preferences
prefs.server, prefs.timeout = server, 20.0

scene = bpy.context.scene
for o in list(scene.objects):
    if o.type == "MESH":
        bpy.data.objects.remove(o)
from PIL import Image  # noqa: E402  (the test's Python has Pillow; Blender does not need it)

w, h = Image.open(image_path).size
scene.render.resolution_x, scene.render.resolution_y = w, h
scene.render.resolution_percentage = 100
cam = scene.camera
cam.location = (0.8, -5.0, 1.2)
cam.rotation_euler = (np.radians(80), 0.0, np.radians(8))
cam.data.lens = 45
scene.cursor.location = (0.2, 0.0, 0.6)
bpy.context.view_layer.update()

st = scene.animate4d
# An artist error first: no prompt.
st.image_path = image_path
st.prompt = ""
try:  # an ERROR report: the UI shows it; bpy-as-a-module raises it after the operator ends
    obs["no_prompt"] = sorted(bpy.ops.animate4d.animate())
except RuntimeError as e:
    obs["no_prompt"] = ["CANCELLED"]
    obs["no_prompt_report"] = str(e)
obs["no_prompt_status"] = st.status

st.prompt, st.frames, st.fps, st.start_frame = "a creature is dancing", 6, 24, 1
obs["animate"] = sorted(bpy.ops.animate4d.animate())
ok = pump(lambda: len(st.jobs) == 1 and st.jobs[0].object_name != "")
obs["imported"] = ok
job = st.jobs[0]
obs["job_state"], obs["status"] = job.state, st.status
obj = bpy.data.objects.get(job.object_name)
obs["mesh_objects"] = sum(1 for o in scene.objects if o.type == "MESH")
if obj is not None:
    c = mod.deps.client.Client(server, timeout_s=20)
    c.connect()
    result = c.fetch_mesh(job.job_id)
    c.close()
    obs["shape_keys"] = len(obj.data.shape_keys.key_blocks)
    obs["frames"] = len(result.frames)
    errs = []
    dg = bpy.context.evaluated_depsgraph_get()
    for k in range(len(result.frames)):
        scene.frame_set(job.start_frame + k)
        ev = obj.evaluated_get(dg)
        me = ev.to_mesh()
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
        errs.append(float(np.abs(co.reshape(-1, 3) - result.frames[k]).max()))
    obs["frame_errors"] = errs
    obs["colours"] = "Color" in obj.data.color_attributes
    obs["material"] = [m.name for m in obj.data.materials]
    obs["matrix_error"] = float(np.abs(np.array(obj.matrix_world) - result.transform).max())
    obs["frame_range"] = [scene.frame_start, scene.frame_end]
    # Frame 0 through the reference camera, projected by Blender itself.
    scene.frame_set(job.start_frame)
    mw = obj.matrix_world
    pts = np.array([[*(lambda p: (p.x * w, (1 - p.y) * h))(
        world_to_camera_view(scene, cam, mw @ Vector(v)))] for v in result.frames[0]])
    import cv2

    sil = np.zeros((h, w), np.uint8)
    tri = pts[result.faces.astype(np.int64)]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    for t in tri[(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0]:
        cv2.fillConvexPoly(sil, np.rint((t - 0.5) * 16).astype(np.int32), 1, shift=4)
    mask = np.asarray(Image.open(image_path))[..., 3] > 127
    sil = sil.astype(bool)
    obs["iou"] = float((sil & mask).sum() / (sil | mask).sum())

# Export the animated mesh: glTF morph targets and Alembic.
bpy.context.view_layer.objects.active = obj
obj.select_set(True)
export_dir = blend_path.rsplit("/", 1)[0]
obs["export_glb"] = sorted(bpy.ops.animate4d.export(filepath=export_dir + "/out.glb"))
obs["export_abc"] = sorted(bpy.ops.animate4d.export(filepath=export_dir + "/out.abc"))

# Cancel a long job.
st.frames = 120
bpy.ops.animate4d.animate()
pump(lambda: len(st.jobs) == 2 and st.jobs[1].state == "running" and st.jobs[1].step > 2)
st.active_job = 1
obs["cancel"] = sorted(bpy.ops.animate4d.cancel())
obs["cancelled"] = pump(lambda: st.jobs[1].state == "cancelled", 20)
obs["cancel_status"] = st.status

# Mesh mode: the artist's own object, with UVs, a material, vertex groups (one named "root"
# pins its base), a modifier and a shape key of its own, placed, turned and scaled.
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, location=(0.3, -0.2, 0.5),
                                     rotation=(0.3, 0.0, 0.5), scale=(1.0, 1.0, 1.6))
art = bpy.context.active_object
art.name = "Artist"
art.data.uv_layers.new(name="Second")
art.data.materials.append(bpy.data.materials.new("Skin"))
art.vertex_groups.new(name="root").add(
    [v.index for v in art.data.vertices if v.co.z < -0.45], 1.0, "REPLACE")
art.vertex_groups.new(name="Other")
art.modifiers.new("Smooth", "SUBSURF")
art.shape_key_add(name="Basis")
smile = art.shape_key_add(name="Smile")
smile.data[0].co.z += 0.1
smile.value = 0.0  # the artist's own key, at rest
bpy.ops.ed.undo_push(message="the artist's setup")
objects_before = len(bpy.data.objects)
st.source, st.frames, st.start_frame, st.mesh_target = "MESH", 6, 1, "SELF"
obs["mesh_animate"] = sorted(bpy.ops.animate4d.animate())
bpy.ops.ed.undo_push(message="the artist works on while the job runs")
pump(lambda: len(st.jobs) == 3 and (st.jobs[2].object_name or st.jobs[2].state == "failed"))
obs["mesh_job"] = [st.jobs[2].state, st.jobs[2].object_name, st.jobs[2].message, st.status]
obs["scenes_after_mesh_mode"] = len(bpy.data.scenes)
art = bpy.data.objects["Artist"]
obs["mesh_keys"] = [kb.name for kb in art.data.shape_keys.key_blocks]
obs["mesh_uv_layers"] = [layer.name for layer in art.data.uv_layers]
obs["mesh_materials"] = [m.name for m in art.data.materials]
obs["mesh_groups"] = [g.name for g in art.vertex_groups]
obs["mesh_modifiers"] = [m.type for m in art.modifiers]
obs["mesh_objects_added"] = len(bpy.data.objects) - objects_before
c = mod.deps.client.Client(server, timeout_s=20)
c.connect()
mesh_result = c.fetch_mesh(st.jobs[2].job_id)
c.close()
# Frame k shows key k: the shape keys (modifier off) through the object's matrix are the
# result's frame k in world space.
art.modifiers["Smooth"].show_viewport = False
mw = np.array(art.matrix_world)
errs = []
for k in range(len(mesh_result.frames)):
    scene.frame_set(st.start_frame + k)
    ev = art.evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    errs.append(float(np.abs(co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
                             - mesh_result.frames[k]).max()))
art.modifiers["Smooth"].show_viewport = True
obs["mesh_frame_errors"] = errs
obs["mesh_motion"] = float(np.abs(mesh_result.frames - mesh_result.frames[0]).max())
pinned = mod.mesh_target.pinned_ids(art)
obs["mesh_pinned"] = [len(pinned), mesh_result.metadata["root"]]
# Ctrl-Z takes the import back.
bpy.ops.ed.undo()
obs["keys_after_undo"] = [kb.name for kb in
                          bpy.data.objects["Artist"].data.shape_keys.key_blocks]
scene = bpy.context.scene
st = scene.animate4d
obs["jobs_after_undo"] = len(st.jobs)
# On a duplicate: the original keeps its keys.
st.source, st.mesh_target, st.frames = "MESH", "DUPLICATE", 4
bpy.context.view_layer.objects.active = bpy.data.objects["Artist"]
bpy.ops.animate4d.animate()
pump(lambda: len(st.jobs) == 4 and (st.jobs[3].object_name or st.jobs[3].state == "failed"))
dup = bpy.data.objects.get(st.jobs[3].object_name)
obs["duplicate"] = [dup is not None and dup.name != "Artist",
                    len(dup.data.shape_keys.key_blocks) if dup else 0,
                    [m.type for m in dup.modifiers] if dup else [],
                    len(bpy.data.objects["Artist"].data.shape_keys.key_blocks)]
# Mesh mode with a preset no worker runs in mesh mode: the server says so.
st.preset, st.mesh_target = "fast", "SELF"
bpy.context.view_layer.objects.active = bpy.data.objects["Artist"]
bpy.ops.animate4d.animate()
pump(lambda: len(st.jobs) == 5 and st.jobs[4].state == "failed", 60)
obs["mesh_fast"] = [st.jobs[4].state, st.jobs[4].message, st.status]
st.source, st.preset = "IMAGE", "preview"
# A GPU preset's Loop toggle reaches the job's options.
st.preset, st.loop, st.motion_terms = "paper", True, 6
loop_opts = engine.build_request(bpy.context)[2]
obs["loop_options"] = [loop_opts.preset, loop_opts.loop, loop_opts.motion_terms]
st.preset, st.loop = "preview", False

# The server's previews: shown as one image, replaced by each new one, held in memory.
def png_of(rgba, size):
    import io

    buf = io.BytesIO()
    Image.new("RGBA", size, rgba).save(buf, "PNG")
    return buf.getvalue()


engine._show_preview(png_of((255, 0, 0, 255), (6, 4)))
engine._show_preview(png_of((0, 255, 0, 255), (8, 8)))
img = bpy.data.images.get(engine.PREVIEW_IMAGE)
obs["preview"] = [list(img.size), [round(v, 3) for v in img.pixels[:4]],
                  img.packed_file is not None]

# Re-run: the selected job's settings come back into the panel and it is sent again.
first = st.jobs[0]
sent_prompt, st.prompt, st.frames = json.loads(first.options_json)["prompt"], "changed", 3
st.active_job = 0
jobs_before = len(st.jobs)
obs["rerun"] = sorted(bpy.ops.animate4d.rerun())
obs["rerun_settings"] = [st.prompt == sent_prompt, st.frames, len(st.jobs) - jobs_before,
                         st.jobs[-1].label == first.label]

# A long clip lands as a Mesh Sequence Cache on an Alembic file, not 300 shape keys.
grid = np.stack(np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 12)), -1).reshape(-1, 2)
rest = np.c_[grid, np.zeros(len(grid))].astype(np.float32)
quads = [(r * 12 + c, r * 12 + c + 1, (r + 1) * 12 + c) for r in range(11) for c in range(11)]
wave = np.stack([rest + [0, 0, 0.2 * np.sin(2 * np.pi * k / 300)] * rest[:, :1]
                 for k in range(300)]).astype(np.float32)
long_clip = mod.deps.a4d.AnimatedMesh(
    vertices=rest, faces=np.array(quads, np.uint32), frames=wave, fps=24.0,
    colors=np.full((len(rest), 4), 200, np.uint8))
item = st.jobs.add()
item.job_id, item.start_frame, item.set_frame_range = "long-clip-job", 1, True
st.import_as = "AUTO"
engine._apply("result", "long-clip-job", long_clip)
cached = bpy.data.objects[item.object_name]
errors = []
for k in (0, 1, 150, 299):
    scene.frame_set(1 + k)
    shown = cached.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    co = np.empty(len(shown.vertices) * 3, np.float32)
    shown.vertices.foreach_get("co", co)
    errors.append(float(np.abs(co.reshape(-1, 3) - wave[k]).max()))
mods = [m.type for m in cached.modifiers]
obs["long_clip"] = [mods, cached.data.shape_keys is None, errors,
                    os.path.isfile(bpy.path.abspath(cached.modifiers[0].cache_file.filepath))
                    if mods else False, "stream" in st.status]
st.jobs.remove(len(st.jobs) - 1)

# Time left in a stage, from its step rate: 10 steps in 0.6 s on the engine's clock leave
# 90 steps, 5.4 s.
probe = st.jobs.add()
probe.job_id = "probe-job"
clock = [1000.0]
real_time, engine.time = engine.time, types.SimpleNamespace(monotonic=lambda: clock[0])
try:
    engine._apply("progress", "probe-job", mod.deps.wire.Progress(stage="dynamic", step=10,
                                                                   total=110))
    clock[0] += 0.6
    engine._apply("progress", "probe-job", mod.deps.wire.Progress(stage="dynamic", step=20,
                                                                   total=110))
finally:
    engine.time = real_time
obs["eta"] = [probe.eta_s, mod.ui._duration(probe.eta_s), mod.ui._duration(3900)]
st.jobs.remove(len(st.jobs) - 1)

# Save, reopen: the job list survives and unfinished jobs are followed again.
bpy.ops.wm.save_as_mainfile(filepath=blend_path)
bpy.ops.wm.open_mainfile(filepath=blend_path)
st = bpy.context.scene.animate4d
obs["jobs_after_reopen"] = [(j.job_id[:8], j.state) for j in st.jobs][:2]

# The server goes away: the panel says so, nothing raises.
prefs.server = "tcp://127.0.0.1:9"
st.frames = 4
obs["down_animate"] = sorted(bpy.ops.animate4d.animate())
pump(lambda: "unreachable" in st.status, 30)
obs["down_status"] = st.status

# The local server: started with the preferences' Python and models folder, its output in
# a log file the panel opens.
prefs.server, prefs.backend_python = "", sys.executable
prefs.models_dir, prefs.local_store = models_dir, str(Path(blend_path).parent / "local-store")
engine.LOCAL_ADDRESS = f"tcp://127.0.0.1:{local_port}"
engine._ensure_local_server(prefs)
log_path = Path(engine.local_log_path())
end = time.monotonic() + 90
while time.monotonic() < end and "connected" not in (
        log_path.read_text() if log_path.exists() else ""):
    time.sleep(0.3)
obs["local_log"] = [str(log_path), log_path.read_text() if log_path.exists() else ""]
engine._state["local_server"].terminate()
engine._state["local_server"].wait(30)

with open(out_path, "w") as fh:
    json.dump(obs, fh)
print("SCENARIO DONE")
