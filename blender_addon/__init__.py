"""Animate4D for Blender: one image and a motion prompt become an animated mesh.

The panel (View3D > Sidebar > Animate4D) sends the job to an Animate4D server (a local one by
default); the network runs in a background thread and results are applied on the main thread
by a timer that calls `engine.drain()`.
"""

import contextlib

import bpy
from bpy.app.handlers import persistent

from . import engine, motion_ui, operators, props, ui

_CLASSES = (*props.CLASSES, *operators.CLASSES, *ui.CLASSES)


@persistent
def _on_load(_):
    """Opening a .blend: follow again its unfinished jobs (quietly if no server is set up)."""
    with contextlib.suppress(engine.UserError):
        engine.reattach_all()


def _menu_import(self, context):
    self.layout.operator(operators.ANIMATE4D_OT_import_a4d.bl_idname, text="Animate4D (.a4d)")


def register():
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.animate4d = bpy.props.PointerProperty(type=props.Animate4DSettings)
    motion_ui.register()
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.app.handlers.load_post.append(_on_load)
    if not bpy.app.timers.is_registered(engine.drain_timer):
        bpy.app.timers.register(engine.drain_timer, first_interval=0.2, persistent=True)


def unregister():
    if bpy.app.timers.is_registered(engine.drain_timer):
        bpy.app.timers.unregister(engine.drain_timer)
    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    engine.shutdown()
    motion_ui.unregister()
    del bpy.types.Scene.animate4d
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
