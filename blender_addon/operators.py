"""Operators: the buttons. Each reports problems in plain words and never raises into Blender."""

from __future__ import annotations

import os

import bpy
from bpy.props import StringProperty

from . import engine
from .deps import a4d
from .importer import import_animated_mesh


class ANIMATE4D_OT_animate(bpy.types.Operator):
    bl_idname = "animate4d.animate"
    bl_label = "Animate"
    bl_description = "Send the image and prompt to the server; the result arrives as a mesh"

    def execute(self, context):
        return _submit(self, context)


def _submit(op, context, job=None):
    """Send the panel's settings (after putting `job`'s back, for Re-run); a problem the
    artist can fix goes to the status line and the report."""
    try:
        if job is not None:
            engine.restore_settings(context, job)
        engine.submit(context)
    except engine.UserError as e:
        engine.settings(context.scene).status = str(e)
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    return {"FINISHED"}


class ANIMATE4D_OT_cancel(bpy.types.Operator):
    bl_idname = "animate4d.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the selected job"

    job_id: StringProperty(default="")

    def execute(self, context):
        st = engine.settings(context.scene)
        job = self.job_id
        if not job and 0 <= st.active_job < len(st.jobs):
            job = st.jobs[st.active_job].job_id
        if not job or job.startswith("sending-"):
            self.report({"WARNING"}, "No job to cancel (a job still being sent cannot be)")
            return {"CANCELLED"}
        try:
            engine.cancel(job)
        except engine.UserError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        st.status = f"Cancelling {job[:8]}..."
        return {"FINISHED"}


class ANIMATE4D_OT_rerun(bpy.types.Operator):
    bl_idname = "animate4d.rerun"
    bl_label = "Re-run"
    bl_description = ("Put the selected job's settings (prompt, preset, clip, motion, image) "
                      "back in the panel and send it again")

    def execute(self, context):
        st = engine.settings(context.scene)
        if not 0 <= st.active_job < len(st.jobs):
            self.report({"WARNING"}, "Select a job in the list first")
            return {"CANCELLED"}
        return _submit(self, context, st.jobs[st.active_job])


class ANIMATE4D_OT_open_log(bpy.types.Operator):
    bl_idname = "animate4d.open_log"
    bl_label = "Open log"
    bl_description = "Open the local server's log file (what it and its worker printed)"

    def execute(self, context):
        path = engine.local_log_path()
        if not os.path.isfile(path):
            self.report({"WARNING"}, f"No log yet: the local server has not been started "
                                     f"({path})")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=path)
        return {"FINISHED"}


class ANIMATE4D_OT_reattach(bpy.types.Operator):
    bl_idname = "animate4d.reattach"
    bl_label = "Reconnect"
    bl_description = "Follow again the jobs of this file that had not finished"

    def execute(self, context):
        try:
            n = engine.reattach_all()
        except engine.UserError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Following {n} job(s)")
        return {"FINISHED"}


class ANIMATE4D_OT_import_a4d(bpy.types.Operator):
    bl_idname = "animate4d.import_a4d"
    bl_label = "Import Animate4D (.a4d)"
    bl_description = "Import an .a4d result file as a mesh with one shape key per frame"

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.a4d", options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            mesh = a4d.load(self.filepath)
        except Exception as e:
            self.report({"ERROR"}, f"Cannot import {self.filepath}: {e}")
            return {"CANCELLED"}
        st = engine.settings(context.scene)
        import_animated_mesh(mesh, name=bpy.path.display_name_from_filepath(self.filepath),
                             start_frame=st.start_frame, set_frame_range=st.set_frame_range)
        return {"FINISHED"}


class ANIMATE4D_OT_export(bpy.types.Operator):
    bl_idname = "animate4d.export"
    bl_label = "Export Animated Mesh"
    bl_description = "Export the active object's shape-key animation as glTF (morph " \
                     "targets) or Alembic"

    filepath: StringProperty(subtype="FILE_PATH")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        obj = context.active_object
        if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
            self.report({"ERROR"}, "Select an animated mesh (one with shape keys)")
            return {"CANCELLED"}
        for o in context.selected_objects:
            o.select_set(o == obj)
        path = bpy.path.abspath(self.filepath)
        if path.lower().endswith(".abc"):
            bpy.ops.wm.alembic_export(filepath=path, selected=True,
                                      start=context.scene.frame_start,
                                      end=context.scene.frame_end)
        else:
            if not path.lower().endswith((".glb", ".gltf")):
                path += ".glb"
            bpy.ops.export_scene.gltf(filepath=path, use_selection=True, export_morph=True,
                                      export_animations=True, export_apply=False)
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}


CLASSES = (ANIMATE4D_OT_animate, ANIMATE4D_OT_cancel, ANIMATE4D_OT_rerun, ANIMATE4D_OT_open_log,
           ANIMATE4D_OT_reattach, ANIMATE4D_OT_import_a4d, ANIMATE4D_OT_export)
