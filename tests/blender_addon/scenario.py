"""Runs inside a fresh Blender (bpy) process: install the built extension and use it like an
artist would, against a live server. Prints one JSON line of observations for the test."""

import json
import sys
import time

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

zip_path, server, image_path, out_path, blend_path = sys.argv[1:6]
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

# Mesh mode: the request carries the mesh and Blender renders of it; this server says no.
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, location=(0, 0, 0.5))
st.source = "MESH"
st.frames = 6
obs["mesh_animate"] = sorted(bpy.ops.animate4d.animate())
pump(lambda: len(st.jobs) == 3 and st.jobs[2].state == "failed", 60)
obs["mesh_job"] = [st.jobs[2].state, st.jobs[2].message]
obs["mesh_status"] = st.status
obs["scenes_after_mesh_mode"] = len(bpy.data.scenes)
st.source = "IMAGE"

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

with open(out_path, "w") as fh:
    json.dump(obs, fh)
print("SCENARIO DONE")
