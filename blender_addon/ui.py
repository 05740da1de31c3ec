"""The sidebar panel (View3D > Sidebar > Animate4D)."""

from __future__ import annotations

import bpy

from . import engine


class ANIMATE4D_UL_jobs(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname):
        icons = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL",
                 "running": "PLAY", "queued": "TIME"}
        row = layout.row(align=True)
        row.label(text=item.label or item.job_id[:8], icon=icons.get(item.state, "URL"))
        state = item.state
        if item.state == "running" and item.total:
            state = f"{item.stage} {item.step}/{item.total}"
        row.label(text=state)


class ANIMATE4D_PT_panel(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Animate4D"
    bl_label = "Animate4D"

    def draw(self, context):
        st = context.scene.animate4d
        layout = self.layout

        box = layout.box()
        box.label(text="Source", icon="IMAGE_DATA")
        box.row().prop(st, "source", expand=True)
        if st.source == "IMAGE":
            box.template_ID(st, "image", open="image.open")
            if st.image is None:
                box.prop(st, "image_path")
        else:
            obj = context.active_object
            box.label(text=obj.name if obj and obj.type == "MESH" else "Select a mesh",
                      icon="MESH_DATA")
            box.row().prop(st, "mesh_target", expand=True)

        box = layout.box()
        box.label(text="Motion", icon="ANIM")
        box.prop(st, "prompt", text="")
        row = box.row(align=True)
        row.prop(st, "preset", text="")
        row.prop(st, "frames")
        row.prop(st, "fps")
        box.prop(st, "use_prompt_motion")
        if not st.use_prompt_motion:
            box.row(align=True).prop(st, "motion")
        row = box.row(align=True)
        row.prop(st, "amplitude")
        row.prop(st, "speed")
        if st.preset != "preview":
            row = box.row(align=True)
            row.prop(st, "loop")
            if st.loop:
                row.prop(st, "motion_terms")

        box = layout.box()
        box.label(text="Placement", icon="CAMERA_DATA")
        box.prop(st, "camera", text="Camera" if st.camera else "Camera (scene's)")
        box.prop(st, "target", text="Target" if st.target else "Target (3D cursor)")
        row = box.row(align=True)
        row.prop(st, "start_frame")
        row.prop(st, "set_frame_range", text="Set range")
        if st.source == "IMAGE":
            box.prop(st, "import_as")

        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("animate4d.animate", icon="PLAY")
        row.operator("animate4d.cancel", icon="CANCEL", text="")
        if st.status:
            layout.label(text=st.status, icon="INFO")

        if 0 <= st.active_job < len(st.jobs):
            job = st.jobs[st.active_job]
            if job.state == "running" and job.total:
                left = f", {_duration(job.eta_s)} left" if job.eta_s >= 0 else ""
                layout.progress(factor=job.step / max(1, job.total),
                                text=f"{job.stage} {job.step}/{job.total}{left}")
            if job.message:
                layout.label(text=job.message)
        preview = bpy.data.images.get(engine.PREVIEW_IMAGE)
        if preview is not None:
            layout.template_icon(icon_value=preview.preview_ensure().icon_id, scale=6)

        layout.label(text="Jobs in this file")
        layout.template_list("ANIMATE4D_UL_jobs", "", st, "jobs", st, "active_job", rows=3)
        row = layout.row(align=True)
        row.operator("animate4d.rerun", icon="RECOVER_LAST")
        row.operator("animate4d.reattach", icon="FILE_REFRESH")
        row = layout.row(align=True)
        row.operator("animate4d.import_a4d", icon="IMPORT", text="Import .a4d")
        row.operator("animate4d.export", icon="EXPORT", text="Export")
        if not engine.prefs().server.strip():  # the local server: its log
            layout.operator("animate4d.open_log", icon="TEXT")


def _duration(seconds: float) -> str:
    """`42 s`, `12 min`, `1 h 05 min`: what a progress bar has room for."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


CLASSES = (ANIMATE4D_UL_jobs, ANIMATE4D_PT_panel)
