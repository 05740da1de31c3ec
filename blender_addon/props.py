"""Preferences (per user) and settings (per scene, saved in the .blend with the job list)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

MODES = [("sway", "Sway", "Bend side to side"), ("bounce", "Bounce", "Squash and stretch"),
         ("breathe", "Breathe", "Swell in the middle"), ("twist", "Twist", "Turn about up"),
         ("nod", "Nod", "Bend forward and back")]
PRESETS = [("preview", "Preview", "Seconds, on any CPU, no model weights"),
           ("fast", "Fast", "The GPU pipeline with fewer steps"),
           ("paper", "Paper", "Animate124's published schedule (about an hour on a GPU)")]


class Animate4DPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    server: StringProperty(
        name="Server", default="",
        description="tcp://HOST:PORT of an Animate4D server; empty: a server on this computer, "
                    "started when needed")
    server_key: StringProperty(name="Server public key", subtype="FILE_PATH",
                               description="The server's .key file (remote servers)")
    client_key: StringProperty(name="Your key pair", subtype="FILE_PATH",
                               description="Your .key_secret file (remote servers)")
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python of an animate4d install, used to start the local server "
                    "(e.g. /path/to/animate4d/.venv/bin/python)")
    models_dir: StringProperty(
        name="Models folder", subtype="DIR_PATH", default="",
        description="Pretrained models for the local server's worker (the fast and paper "
                    "presets; `animate4d models fetch --models DIR`); default: the "
                    "ANIMATE4D_MODELS of Blender's environment")
    local_store: StringProperty(name="Local job store", subtype="DIR_PATH", default="",
                                description="Folder for the local server's jobs (default: "
                                            "the server's own default)")
    cache_above_frames: IntProperty(
        name="Stream clips longer than", default=250, min=2, max=100_000,
        description="Results with more frames than this import as a Mesh Sequence Cache on an "
                    "Alembic file (kept in the add-on's user folder) instead of one shape key "
                    "per frame, so the .blend stays small")
    timeout: FloatProperty(name="Timeout", default=10.0, min=1.0, max=300.0, unit="TIME",
                           description="Seconds to wait for the server to answer")

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "server")
        sub = col.column()
        sub.prop(self, "server_key")
        sub.prop(self, "client_key")
        col.separator()
        col.prop(self, "backend_python")
        col.prop(self, "models_dir")
        col.prop(self, "local_store")
        col.prop(self, "cache_above_frames")
        col.prop(self, "timeout")


class Animate4DJob(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    label: StringProperty(name="Label")
    state: StringProperty(name="State", default="sending")
    stage: StringProperty(name="Stage")
    step: IntProperty(name="Step")
    total: IntProperty(name="Total")
    message: StringProperty(name="Message")
    object_name: StringProperty(name="Object")
    start_frame: IntProperty(name="Start frame", default=1)
    set_frame_range: BoolProperty(name="Set frame range", default=True)
    mesh_mode: BoolProperty(name="Mesh mode", default=False)
    target_object: StringProperty(name="Target object",
                                  description="Mesh mode: the object that gets the shape keys")
    target_duplicate: BoolProperty(name="On a duplicate", default=False)
    options_json: StringProperty(name="Options",
                                 description="The job's options as sent (for Re-run)")
    image_name: StringProperty(name="Image", description="The image datablock sent, if any")
    image_path: StringProperty(name="Image file", description="The image file sent, if any")
    eta_s: FloatProperty(name="Time left", default=-1.0,
                         description="Seconds left in the running stage, from its step rate")
    stage_started: FloatProperty(default=0.0)  # monotonic time the stage's first step was seen
    stage_first_step: IntProperty(default=0)


class Animate4DSettings(bpy.types.PropertyGroup):
    source: EnumProperty(name="Source", items=[
        ("IMAGE", "Image", "Animate a picture"),
        ("MESH", "Selected mesh", "Animate the active mesh, keeping its topology (mesh mode)"),
    ], default="IMAGE")
    mesh_target: EnumProperty(name="Result on", items=[
        ("SELF", "This object", "Add the frames as shape keys to the selected object itself"),
        ("DUPLICATE", "A duplicate", "Add them to a copy of it (modifiers, vertex groups, "
                                     "materials and UVs copied along)"),
    ], default="SELF")
    image: PointerProperty(name="Image", type=bpy.types.Image,
                           description="The picture to animate (a loaded image)")
    image_path: StringProperty(name="Image file", subtype="FILE_PATH",
                               description="Or a file on disk")
    prompt: StringProperty(name="Prompt", default="",
                           description="The motion, in words: 'a panda is dancing'")
    preset: EnumProperty(name="Preset", items=PRESETS, default="preview")
    frames: IntProperty(name="Frames", default=24, min=1, max=1000)
    fps: IntProperty(name="FPS", default=24, min=1, max=240)
    start_frame: IntProperty(name="Start frame", default=1)
    set_frame_range: BoolProperty(name="Set scene frame range", default=True)
    import_as: EnumProperty(name="Import as", items=[
        ("AUTO", "Auto", "Shape keys, or a Mesh Sequence Cache for clips longer than the "
                         "preferences' limit"),
        ("SHAPE_KEYS", "Shape keys", "One shape key per frame, kept in the .blend (the motion "
                                     "edits work on these)"),
        ("CACHE", "Mesh Sequence Cache", "Frames stream from an Alembic file: a small .blend"),
    ], default="AUTO")
    use_prompt_motion: BoolProperty(name="Motion from prompt", default=True,
                                    description="Pick the motion from the prompt's words")
    motion: EnumProperty(name="Motion", items=MODES, options={"ENUM_FLAG"}, default={"sway"})
    amplitude: FloatProperty(name="Amplitude", default=1.0, min=0.0, max=3.0)
    speed: FloatProperty(name="Speed", default=1.0, min=0.05, max=10.0,
                         description="Cycles per second (rounded so the loop closes)")
    loop: BoolProperty(name="Loop", default=False,
                       description="Fast and paper presets: learn a motion that loops over the "
                                   "clip (preview clips always loop)")
    motion_terms: IntProperty(name="Terms", default=4, min=1, max=16,
                              description="Fourier terms per point of a looping motion; "
                                          "fewer is smoother")
    camera: PointerProperty(name="Camera", type=bpy.types.Object,
                            poll=lambda self, obj: obj.type == "CAMERA",
                            description="Reference camera (default: the scene camera)")
    target: PointerProperty(name="Target", type=bpy.types.Object,
                            description="Where the object stands (default: the 3D cursor)")
    status: StringProperty(name="Status", default="")
    jobs: CollectionProperty(type=Animate4DJob)
    active_job: IntProperty(default=0)


CLASSES = (Animate4DPreferences, Animate4DJob, Animate4DSettings)
