"""Main-thread logic: build requests from the scene, own the session, apply its events.

`drain()` is the one place network results reach bpy. Blender calls it from a timer; tests call
it directly (timers do not run in bpy-as-a-module). It never raises: every failure becomes a
status line an artist can read.
"""

from __future__ import annotations

import os
import queue
import subprocess
import tempfile
import time
import traceback
import uuid

import bpy

from .deps import keys, options, wire
from .importer import import_animated_mesh
from .session import Session

LOCAL_ADDRESS = "tcp://127.0.0.1:5555"
_state = {"session": None, "local_server": None}


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
    server_key = keypair = None
    if p.server_key or p.client_key:
        try:
            server_key = keys.load_public(bpy.path.abspath(p.server_key))
            keypair = keys.load_keypair(bpy.path.abspath(p.client_key))
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


def _ensure_local_server(p) -> None:
    """Start `animate4d serve --local` with the configured Python, once, if it is set."""
    proc = _state["local_server"]
    if proc is not None and proc.poll() is None or not p.backend_python:
        return  # running, or the artist runs one by hand
    cmd = [bpy.path.abspath(p.backend_python), "-m", "animate4d.backend", "serve", "--local",
           "--bind", LOCAL_ADDRESS]
    if p.local_store:
        cmd += ["--store", bpy.path.abspath(p.local_store)]
    try:
        _state["local_server"] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)
    except OSError as e:
        raise UserError(f"Cannot start the local server with {cmd[0]}: {e.strerror}") from None


def shutdown() -> None:
    s = _state["session"]
    if s is not None:
        s.stop()
    _state["session"] = None


# -- requests --------------------------------------------------------------------------------
def image_bytes(st) -> tuple[bytes, str]:
    img = st.image
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
    data, name = image_bytes(st)
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
        target=[float(x) for x in target],
    )
    try:
        opts.validate()
    except Exception as e:
        raise UserError(str(e)) from None
    return data, name, opts


def submit(context) -> str:
    data, name, opts = build_request(context)
    st = settings(context.scene)
    token = "sending-" + uuid.uuid4().hex[:12]
    item = st.jobs.add()
    item.job_id, item.label, item.state = token, f"{name}: {opts.prompt[:40]}", "sending"
    item.start_frame, item.set_frame_range = st.start_frame, st.set_frame_range
    st.active_job = len(st.jobs) - 1
    session().submit(token, data, name, opts)
    st.status = f"Sending {name}..."
    return token


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
        obj = import_animated_mesh(payload, name=f"Animate4D {item.job_id[:8]}",
                                   collection=scene.collection, start_frame=item.start_frame,
                                   set_frame_range=item.set_frame_range)
        item.object_name, item.state = obj.name, wire.DONE
        st.status = (f"Imported {obj.name}: {len(payload.frames)} frames "
                     f"({time.perf_counter() - t0:.2f} s)")


def _show_preview(png: bytes) -> None:
    path = os.path.join(tempfile.gettempdir(), "animate4d_preview.png")
    with open(path, "wb") as fh:
        fh.write(png)
    img = bpy.data.images.get("Animate4D Preview")
    if img is None:
        img = bpy.data.images.load(path)
        img.name = "Animate4D Preview"
    else:
        img.filepath = path
        img.reload()


def drain_timer() -> float:
    drain()
    return 0.2
