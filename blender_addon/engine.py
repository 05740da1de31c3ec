"""Main-thread logic: build requests from the scene, own the session, apply its events.

`drain()` is the one place network results reach bpy. Blender calls it from a timer; tests call
it directly (timers do not run in bpy-as-a-module). It never raises: every failure becomes a
status line an artist can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import tempfile
import time
import traceback
import uuid

import bpy

from . import mesh_target
from .deps import arrays, keys, options, wire
from .importer import import_animated_mesh, import_as_cache
from .session import Session

LOCAL_ADDRESS = "tcp://127.0.0.1:5555"
_state = {"session": None, "local_server": None}
LOCAL_LOG = "local-server.log"
# Settings a job's options fill back in for Re-run (the rest are the scene's: camera, target).
RERUN_FIELDS = ("prompt", "preset", "frames", "fps", "amplitude", "speed", "loop",
                "motion_terms")


class UserError(Exception):
    """Something the artist can fix; the message says how."""


def prefs():
    return bpy.context.preferences.addons[__package__].preferences


def settings(scene=None):
    return (scene or bpy.context.scene).animate4d


# -- the connection ------------------------------------------------------------------------
def session() -> Session:
    p = prefs()
    address = p.server.strip() or LOCAL_ADDRESS
    s = _state["session"]
    if s is not None and s.address == address and s.thread.is_alive():
        return s
    if s is not None:
        s.stop()
    try:
        server_key, keypair = keys.load_curve_files(
            p.server_key and bpy.path.abspath(p.server_key),
            p.client_key and bpy.path.abspath(p.client_key))
    except Exception as e:
        raise UserError(f"Cannot read the keys: {e}. Check them in the add-on "
                        "preferences.") from None
    if not keys.is_loopback(address):
        if not bpy.app.online_access:
            raise UserError("Online access is off (Preferences > System > Network): turn it "
                            "on to use a remote server")
        if server_key is None:
            raise UserError("A remote server needs its public key and your key pair: set them "
                            "in the add-on preferences")
    if not p.server.strip():
        _ensure_local_server(p)
    s = Session(address, server_key=server_key, keypair=keypair, timeout_s=p.timeout)
    _state["session"] = s
    return s


def user_folder(sub: str = "") -> str:
    """The extension's own folder in the user's Blender files (made on first use)."""
    try:
        folder = bpy.utils.extension_path_user(__package__, path=sub, create=True)
    except (ValueError, AttributeError):  # not installed as an extension
        folder = os.path.join(tempfile.gettempdir(), "animate4d", sub)
    os.makedirs(folder, exist_ok=True)
    return folder


def local_log_path(p=None) -> str:
    """Where the local server writes its output: beside its job store when one is set, else
    in the extension's user folder."""
    p = p or prefs()
    folder = bpy.path.abspath(p.local_store) if p.local_store else user_folder()
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, LOCAL_LOG)


def _ensure_local_server(p) -> None:
    """Start `animate4d serve --local` with the configured Python, once, if it is set; its
    output goes to `local_log_path` (the panel's Open log), and its worker reads the models
    folder of the preferences."""
    proc = _state["local_server"]
    if proc is not None and proc.poll() is None or not p.backend_python:
        return  # running, or the artist runs one by hand
    cmd = [bpy.path.abspath(p.backend_python), "-m", "animate4d.backend", "serve", "--local",
           "--bind", LOCAL_ADDRESS]
    if p.local_store:
        cmd += ["--store", bpy.path.abspath(p.local_store)]
    env = dict(os.environ)
    if p.models_dir:
        env["ANIMATE4D_MODELS"] = bpy.path.abspath(p.models_dir)
    log_path = local_log_path(p)
    try:
        with open(log_path, "ab") as log:  # the child keeps its own copy of the handle
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            _state["local_server"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                      env=env)
    except OSError as e:
        raise UserError(f"Cannot start the local server with {cmd[0]}: {e.strerror}") from None
    _state["local_log"] = log_path


def shutdown() -> None:
    s = _state["session"]
    if s is not None:
        s.stop()
    _state["session"] = None


# -- requests --------------------------------------------------------------------------------
def image_bytes(st, active=None) -> tuple[bytes, str]:
    """The image: the chosen datablock, else a selected image empty's, else the file."""
    img = st.image
    if img is None and active is not None and active.type == "EMPTY" and \
            active.empty_display_type == "IMAGE" and active.data is not None:
        img = active.data
    if img is not None:
        if img.packed_file is not None:
            return bytes(img.packed_file.data), img.name
        path = bpy.path.abspath(img.filepath)
        if not path or not os.path.isfile(path):
            raise UserError(f"The image '{img.name}' is not saved to a file: save or pack it")
        with open(path, "rb") as fh:
            return fh.read(), os.path.basename(path)
    path = bpy.path.abspath(st.image_path)
    if not st.image_path or not os.path.isfile(path):
        raise UserError("Choose an image to animate (an image or an image file)")
    with open(path, "rb") as fh:
        return fh.read(), os.path.basename(path)


def camera_dict(scene, cam_obj) -> dict:
    """The reference camera in the protocol's (Blender's) terms."""
    cam = cam_obj.data
    r = scene.render
    scale = r.resolution_percentage / 100.0
    res = [max(1, round(r.resolution_x * scale)), max(1, round(r.resolution_y * scale))]
    if cam.type != "PERSP":
        raise UserError(f"The camera '{cam_obj.name}' is not a perspective camera")
    return {
        "matrix_world": [list(row) for row in cam_obj.matrix_world],
        "resolution": res, "lens": cam.lens, "sensor_width": cam.sensor_width,
        "sensor_height": cam.sensor_height, "sensor_fit": cam.sensor_fit,
        "shift_x": cam.shift_x, "shift_y": cam.shift_y,
    }


def build_request(context):
    st = settings(context.scene)
    mesh = None
    if st.source == "MESH":
        mesh = mesh_input(context)
        data, name = mesh.views[0].png, f"{context.active_object.name}.png"
    else:
        data, name = image_bytes(st, context.active_object)
    if not st.prompt.strip():
        raise UserError("Describe the motion in the prompt ('a panda is dancing')")
    cam_obj = st.camera or context.scene.camera
    if cam_obj is None:
        raise UserError("The scene has no camera: add one, or choose a reference camera")
    target = st.target.matrix_world.translation if st.target else context.scene.cursor.location
    opts = options.JobOptions(
        prompt=st.prompt, preset=st.preset, frames=st.frames, fps=float(st.fps),
        motion=None if st.use_prompt_motion else sorted(st.motion) or None,
        amplitude=st.amplitude, speed=st.speed, camera=camera_dict(context.scene, cam_obj),
        target=[float(x) for x in target], loop=st.loop, motion_terms=st.motion_terms,
    )
    try:
        opts.validate()
    except Exception as e:
        raise UserError(str(e)) from None
    return data, name, opts, mesh


VIEW_SIZE = 128
VIEW_YAWS = (0.0, 90.0, 180.0, 270.0)  # front, right, back, left


def mesh_input(context):
    """Mesh mode: the active mesh's own vertices (world space, before modifiers, so that the
    result lands on them as shape keys), its triangles, the vertices of a `pin`/`root` vertex
    group, and four renders of it, made with Cycles in a throwaway scene so the artist's scene
    is left as it was."""
    import math

    import numpy as np
    from mathutils import Vector

    obj = context.active_object
    if obj is None or obj.type != "MESH":
        raise UserError("Mesh mode: select the mesh to animate (make it active)")
    verts, tris, pin = mesh_target.request_arrays(obj)
    if len(tris) == 0:
        raise UserError(f"Mesh mode: '{obj.name}' has no faces")
    centre = (verts.min(0) + verts.max(0)) / 2
    radius = float(np.linalg.norm(verts - centre, axis=1).max()) or 1.0
    dist = 1.3 * radius / math.tan(math.radians(20))

    scene = bpy.data.scenes.new("animate4d_views")
    cam_data = bpy.data.cameras.new("animate4d_view_cam")
    cam = bpy.data.objects.new("animate4d_view_cam", cam_data)
    sun_data = bpy.data.lights.new("animate4d_view_sun", "SUN")
    sun = bpy.data.objects.new("animate4d_view_sun", sun_data)
    views = []
    try:
        scene.collection.objects.link(obj)
        scene.collection.objects.link(cam)
        scene.collection.objects.link(sun)
        scene.camera = cam
        cam_data.lens_unit, cam_data.sensor_fit = "FOV", "AUTO"
        cam_data.angle = math.radians(40)
        r = scene.render
        r.engine, r.film_transparent = "CYCLES", True
        r.resolution_x = r.resolution_y = VIEW_SIZE
        r.resolution_percentage = 100
        scene.cycles.samples, scene.cycles.device = 8, "CPU"
        path = os.path.join(tempfile.gettempdir(), f"animate4d_view_{uuid.uuid4().hex}.png")
        for yaw in VIEW_YAWS:
            a = math.radians(yaw)
            eye = Vector(centre) + Vector((dist * math.sin(a), -dist * math.cos(a), 0.0))
            cam.location = eye
            cam.rotation_euler = (Vector(centre) - eye).to_track_quat("-Z", "Y").to_euler()
            sun.rotation_euler = cam.rotation_euler
            r.filepath = path
            bpy.ops.render.render(write_still=True, scene=scene.name)
            with open(path, "rb") as fh:
                views.append(wire.MeshView(png=fh.read(), camera=camera_dict(scene, cam)))
        os.remove(path)
    finally:
        bpy.data.scenes.remove(scene)
        bpy.data.objects.remove(cam)
        bpy.data.objects.remove(sun)
        bpy.data.cameras.remove(cam_data)
        bpy.data.lights.remove(sun_data)
    return wire.MeshInput(vertices=arrays.pack(verts, "<f4"),
                          faces=arrays.pack(tris.reshape(-1, 3), "<u4"), views=views, pin=pin)


def submit(context) -> str:
    data, name, opts, mesh = build_request(context)
    st = settings(context.scene)
    token = "sending-" + uuid.uuid4().hex[:12]
    item = st.jobs.add()
    item.job_id, item.label, item.state = token, f"{name}: {opts.prompt[:40]}", "sending"
    item.start_frame, item.set_frame_range = st.start_frame, st.set_frame_range
    item.options_json = json.dumps({f: getattr(opts, f) for f in RERUN_FIELDS}
                                   | {"motion": opts.motion})
    item.image_name = st.image.name if st.image is not None else ""
    item.image_path = st.image_path if st.image is None else ""
    if mesh is not None:
        item.mesh_mode, item.target_object = True, context.active_object.name
        item.target_duplicate = st.mesh_target == "DUPLICATE"
    st.active_job = len(st.jobs) - 1
    session().submit(token, data, name, opts, mesh)
    st.status = f"Sending {name}..."
    return token


def restore_settings(context, item) -> None:
    """Put a job's settings back in the panel (Re-run): its prompt, preset, clip and motion,
    and its image when that is still there."""
    st = settings(context.scene)
    if not item.options_json:
        raise UserError("This job has no recorded settings (it was made by an older version)")
    opts = json.loads(item.options_json)
    for f in RERUN_FIELDS:
        setattr(st, f, round(opts[f]) if f == "fps" else opts[f])  # the panel's fps is whole
    st.use_prompt_motion = opts["motion"] is None
    if opts["motion"]:
        st.motion = set(opts["motion"])
    st.source = "MESH" if item.mesh_mode else "IMAGE"
    if item.mesh_mode and item.target_object in bpy.data.objects:
        context.view_layer.objects.active = bpy.data.objects[item.target_object]
    elif item.image_name in bpy.data.images:
        st.image = bpy.data.images[item.image_name]
    elif item.image_path:
        st.image, st.image_path = None, item.image_path


def cancel(job_id: str) -> None:
    session().cancel(job_id)


def reattach_all() -> int:
    """After opening a .blend: follow again every job that had not finished."""
    n = 0
    for scene in bpy.data.scenes:
        for item in scene.animate4d.jobs:
            if item.state in (wire.QUEUED, wire.RUNNING) or (
                    item.state == wire.DONE and not item.object_name):
                session().attach(item.job_id)
                n += 1
    return n


# -- events -> scene ---------------------------------------------------------------------------
def _find(job_id: str):
    for scene in bpy.data.scenes:
        for item in scene.animate4d.jobs:
            if item.job_id == job_id:
                return scene, item
    return None, None


def drain(max_events: int = 200) -> int:
    """Apply queued network events to the scene; returns how many were applied."""
    s = _state["session"]
    if s is None:
        return 0
    n = 0
    while n < max_events:
        try:
            kind, key, payload = s.events.get_nowait()
        except queue.Empty:
            break
        n += 1
        try:
            _apply(kind, key, payload)
        except Exception:
            msg = traceback.format_exc(limit=2).strip().splitlines()[-1]
            settings().status = f"Internal error while applying a result: {msg}"
    return n


def _apply(kind: str, key, payload) -> None:
    if kind in ("connected", "offline", "error"):
        status = {"connected": lambda w: f"Connected to {w.server}",
                  "offline": lambda m: f"Server unreachable: {m}. Retrying...",
                  "error": lambda m: f"Error: {m}"}[kind](payload)
        for scene in bpy.data.scenes:
            scene.animate4d.status = status
        return
    scene, item = _find(key)
    if item is None:
        return
    st = scene.animate4d
    if kind == "accepted":
        item.job_id, item.state = payload.id, payload.state
        st.status = f"Job {payload.id[:8]} {payload.state}"
    elif kind == "state":
        info = payload
        item.state = info.state
        if info.state == wire.QUEUED and info.queue_position is not None:
            item.message = f"{info.queue_position} ahead in the queue"
        elif info.error_code:
            item.message = f"{info.error_message}"
        st.status = f"Job {item.job_id[:8]} {info.state}" + (
            f": {info.error_message}" if info.error_code else "")
    elif kind == "progress":
        now = time.monotonic()
        if payload.stage != item.stage or payload.step < item.stage_first_step:
            item.stage_started, item.stage_first_step, item.eta_s = now, payload.step, -1.0
        elif payload.step > item.stage_first_step:
            rate = (now - item.stage_started) / (payload.step - item.stage_first_step)
            item.eta_s = rate * (payload.total - payload.step)
        item.stage, item.step, item.total = payload.stage, payload.step, payload.total
        item.state = wire.RUNNING
    elif kind == "preview":
        _show_preview(payload)
    elif kind == "job_error":
        code, message = payload
        if item.state == "sending":
            item.state = "failed"
        item.message = message
        st.status = f"Server: {message}"
    elif kind == "result":
        if item.object_name and item.object_name in bpy.data.objects:
            return  # imported already (a re-attach after reopening the file)
        t0 = time.perf_counter()
        obj, note = _land(scene, item, payload)
        item.object_name, item.state = obj.name, wire.DONE
        st.status = (f"Imported {obj.name}: {len(payload.frames)} frames "
                     f"({time.perf_counter() - t0:.2f} s){note}")
        # One undo step: Ctrl-Z takes the import back (a context without a window manager
        # has no undo stack).
        with contextlib.suppress(RuntimeError):
            bpy.ops.ed.undo_push(message=f"Animate4D: import {item.job_id[:8]}")


def _land(scene, item, mesh):
    """Mesh mode: shape keys on the object the job was made from (or a duplicate of it);
    otherwise, or if that object has changed, a new object. Returns (object, note)."""
    name = f"Animate4D {item.job_id[:8]}"
    if item.mesh_mode:
        obj = bpy.data.objects.get(item.target_object)
        try:
            if obj is not None and item.target_duplicate:
                obj = mesh_target.duplicate(obj)
            return mesh_target.add_shape_keys(
                obj, mesh, f"A4D {item.job_id[:6]}", start_frame=item.start_frame,
                set_frame_range=item.set_frame_range), ""
        except mesh_target.MeshChanged as e:
            note = f"; '{item.target_object}' {e}, so the result is a new object"
    else:
        note = ""
    st = scene.animate4d
    if st.import_as == "CACHE" or (st.import_as == "AUTO"
                                   and len(mesh.frames) > prefs().cache_above_frames):
        path = os.path.join(user_folder("caches"), f"{item.job_id}.abc")
        return import_as_cache(mesh, path, name=name, collection=scene.collection,
                               start_frame=item.start_frame,
                               set_frame_range=item.set_frame_range), \
            f"{note}; its frames stream from {path}"
    return import_animated_mesh(mesh, name=name, collection=scene.collection,
                                start_frame=item.start_frame,
                                set_frame_range=item.set_frame_range), note


PREVIEW_IMAGE = "Animate4D Preview"


def _show_preview(png: bytes) -> None:
    """The server's latest preview as the image the panel shows, its bytes packed in
    memory: a file in the temp folder would be one path for every Blender on the machine,
    each showing the others' previews."""
    img = bpy.data.images.get(PREVIEW_IMAGE)
    if img is None:
        img = bpy.data.images.new(PREVIEW_IMAGE, 1, 1)
    img.pack(data=png, data_len=len(png))
    img.source = "FILE"
    img.buffers_free()  # decoded again from the new bytes when next drawn
    if img.preview is not None:
        img.preview.reload()


def drain_timer() -> float:
    drain()
    return 0.2
