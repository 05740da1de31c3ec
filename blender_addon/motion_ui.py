"""The "Result Motion" panel: Loop, Amplitude, Speed, Frames and Poke for the active result
(View3D > Sidebar > Animate4D). Its own settings (per object), operators and panel; the work is
in motion.py."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import motion
from .deps import errors, spectrum
from .engine import UserError

_LIMITS = spectrum.limits


class Animate4DMotion(bpy.types.PropertyGroup):
    loop: BoolProperty(name="Loop", default=False,
                       description="Close the loop of a clip that does not loop: choose its "
                                   "period, average its cycles, blend the seam")
    amplitude: FloatProperty(name="Amplitude", default=1.0, min=0.0,
                             max=_LIMITS.MAX_EDIT_AMPLITUDE, soft_max=3.0,
                             description="Scale the motion (1: as it came)")
    speed: FloatProperty(name="Speed", default=1.0, min=_LIMITS.MIN_EDIT_SPEED,
                         max=_LIMITS.MAX_EDIT_SPEED, soft_max=4.0,
                         description="Play the motion this many times as fast; a loop keeps "
                                     "whole cycles")
    frames: IntProperty(name="Frames", default=0, min=0, max=_LIMITS.MAX_FRAMES,
                        description="Frames of the clip (0: as the edit gives); a loop's speed "
                                    "is rounded to whole cycles in them")
    vertex_group: StringProperty(name="Vertex group", default="",
                                 description="Scale the amplitude only where this group's "
                                             "weights are (empty: everywhere)")
    source: PointerProperty(type=bpy.types.Mesh, name="Source",
                            description="The clip as it came, kept by the first edit")
    poke_strength: FloatProperty(name="Strength", default=0.05, min=0.0,
                                 max=_LIMITS.MAX_POKE_FORCE, soft_max=1.0, unit="LENGTH",
                                 description="About the largest displacement the poke causes")
    poke_along_normal: BoolProperty(name="Into the surface", default=True,
                                    description="Push along the vertex's inward normal")
    poke_direction: FloatVectorProperty(name="Direction", size=3, subtype="DIRECTION",
                                        default=(0.0, 0.0, -1.0),
                                        description="World direction of the push")
    poke_damping: FloatProperty(name="Damping", default=0.1, min=0.0,
                                max=_LIMITS.MAX_DAMPING,
                                description="Damping ratio: how fast the response dies out")
    poke_frames: IntProperty(name="Frames", default=48, min=1, max=_LIMITS.MAX_FRAMES,
                             description="Frames of the response clip")
    poke_add: BoolProperty(name="Add to previous pokes", default=False,
                           description="Keep the pokes baked before; this one lands at the "
                                       "current frame")


def _result(context):
    obj = context.active_object
    return obj if motion.is_result(obj) else None


class _MotionOperator:
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _result(context) is not None

    def execute(self, context):
        obj = _result(context)
        try:
            vertex = motion.active_vertex(obj) if self.needs_vertex else None
            if obj.mode != "OBJECT":  # key edits made in Edit Mode would be lost on leaving it
                bpy.ops.object.mode_set(mode="OBJECT")
            message = self.run(context, obj, vertex)
        except (UserError, errors.Animate4DError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, message)
        return {"FINISHED"}


class ANIMATE4D_OT_motion_apply(_MotionOperator, bpy.types.Operator):
    bl_idname = "animate4d.motion_apply"
    bl_label = "Apply Motion"
    bl_description = "Re-bake the result's shape keys: its original motion looped, scaled " \
                     "and retimed as set here"
    needs_vertex = False

    def run(self, context, obj, vertex):
        st = obj.animate4d_motion
        clip = motion.apply_motion(obj, context.scene, loop=st.loop, amplitude=st.amplitude,
                                   speed=st.speed, frames=st.frames,
                                   vertex_group=st.vertex_group)
        return f"{clip.num_frames} frames baked"


class ANIMATE4D_OT_motion_restore(_MotionOperator, bpy.types.Operator):
    bl_idname = "animate4d.motion_restore"
    bl_label = "Original Motion"
    bl_description = "Put the motion the result came with back on its shape keys"
    needs_vertex = False

    def run(self, context, obj, vertex):
        clip = motion.restore(obj, context.scene)
        st = obj.animate4d_motion
        st.loop, st.amplitude, st.speed, st.frames = False, 1.0, 1.0, 0
        return f"{clip.num_frames} frames restored"


class ANIMATE4D_OT_poke(_MotionOperator, bpy.types.Operator):
    bl_idname = "animate4d.poke"
    bl_label = "Poke"
    bl_description = "Push the active vertex and bake how the result responds: the modes of " \
                     "its motion ringing and dying out"
    needs_vertex = True

    def run(self, context, obj, vertex):
        st = obj.animate4d_motion
        force = motion.force_in_object(obj, vertex, st.poke_direction, st.poke_strength,
                                       st.poke_along_normal)
        clip = motion.poke(obj, context.scene, vertex, force, damping=st.poke_damping,
                           frames=st.poke_frames, add=st.poke_add)
        return f"Poked vertex {vertex}: {clip.num_frames} frames baked"


class ANIMATE4D_PT_motion(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Animate4D"
    bl_label = "Result Motion"

    @classmethod
    def poll(cls, context):
        return _result(context) is not None

    def draw(self, context):
        obj = context.active_object
        st = obj.animate4d_motion
        layout = self.layout
        box = layout.box()
        box.label(text="Loop and timing", icon="FILE_REFRESH")
        row = box.row(align=True)
        row.prop(st, "loop")
        row.prop(st, "frames")
        row = box.row(align=True)
        row.prop(st, "amplitude")
        row.prop(st, "speed")
        box.prop_search(st, "vertex_group", obj, "vertex_groups")
        row = box.row(align=True)
        row.operator("animate4d.motion_apply", icon="CHECKMARK")
        row.operator("animate4d.motion_restore", icon="LOOP_BACK", text="")
        box = layout.box()
        box.label(text="Poke (the active vertex)", icon="FORCE_FORCE")
        row = box.row(align=True)
        row.prop(st, "poke_strength")
        row.prop(st, "poke_damping")
        box.prop(st, "poke_along_normal")
        if not st.poke_along_normal:
            box.prop(st, "poke_direction", text="")
        row = box.row(align=True)
        row.prop(st, "poke_frames")
        row.prop(st, "poke_add", text="Add")
        box.operator("animate4d.poke", icon="HAND")


CLASSES = (Animate4DMotion, ANIMATE4D_OT_motion_apply, ANIMATE4D_OT_motion_restore,
           ANIMATE4D_OT_poke, ANIMATE4D_PT_motion)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Object.animate4d_motion = PointerProperty(type=Animate4DMotion)


def unregister():
    del bpy.types.Object.animate4d_motion
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
