"""Ground truth from Blender: import any animated .glb, render RGBA views of every frame with
Cycles, and read back the evaluated mesh of every frame.

Run as a separate process with a Python that has `bpy` (the test extra installs it):
    python -m animate4d.backend.synthetic.blender_views GT.glb OUT.npz --frames 16 ...
Blender evaluates the animation itself (morph targets, node animation, skins), so anything its
glTF importer reads is a valid ground truth, and the images come from a renderer that has
nothing in common with the field's.

Lighting is a uniform white environment with no bounces and the Standard view transform: a
diffuse surface then shows its albedo (darkened only where the surface occludes its own sky),
the same from every view, which is what the field's albedo mode models.

Everything is normalised: the union of all frames' bounding boxes is centred at the origin
and scaled to fit a sphere of radius `RADIUS`; cameras sit on a sphere of radius `DISTANCE`
with a 40-degree field of view looking at the origin (the pipeline's framing). The output
holds images (F, V, H, W, 4) uint8, camera dicts (normalised frame), the indices of held-out
views, frame times, and per-frame ground-truth vertices (F, N, 3) with faces (M, 3).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np

RADIUS = 0.6
DISTANCE = 2.2
FOV_DEG = 40.0
MAX_VIEWS = 256
MAX_FRAMES = 240
MAX_RESOLUTION = 1024


def view_directions(n: int, phase: float = 0.0) -> np.ndarray:
    """n unit vectors spread over the sphere (Fibonacci), avoiding the poles."""
    i = np.arange(n) + 0.5
    z = 0.85 - 1.6 * i / n  # elevations from about +58 to -53 degrees
    golden = math.pi * (3 - math.sqrt(5))
    a = golden * np.arange(n) + phase
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(a), r * np.sin(a), z], 1)


def _evaluated_mesh(bpy, depsgraph, objects):
    verts, faces, base = [], [], 0
    for obj in objects:
        ev = obj.evaluated_get(depsgraph)
        me = ev.to_mesh()
        try:
            me.calc_loop_triangles()
            co = np.empty(len(me.vertices) * 3, np.float32)
            me.vertices.foreach_get("co", co)
            tri = np.empty(len(me.loop_triangles) * 3, np.int64)
            me.loop_triangles.foreach_get("vertices", tri)
        finally:
            ev.to_mesh_clear()
        mw = np.array(ev.matrix_world)
        co = co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
        verts.append(co)
        faces.append(tri.reshape(-1, 3) + base)
        base += len(co)
    return np.concatenate(verts).astype(np.float32), np.concatenate(faces)


def _frame_range(bpy, scene):
    lo, hi = math.inf, -math.inf
    for action in bpy.data.actions:
        a, b = action.frame_range
        lo, hi = min(lo, a), max(hi, b)
    if not math.isfinite(lo) or hi <= lo:
        return float(scene.frame_start), float(scene.frame_start)
    return lo, hi


def _materials_without_colour_use_the_colour_attribute(bpy, objects):
    """Objects with vertex colours and no material get one that shows them."""
    for obj in objects:
        me = obj.data
        if me.materials or not me.color_attributes:
            continue
        mat = bpy.data.materials.new(f"{obj.name}_colours")
        mat.use_nodes = True
        attr = mat.node_tree.nodes.new("ShaderNodeVertexColor")
        attr.layer_name = me.color_attributes[0].name
        bsdf = mat.node_tree.nodes["Principled BSDF"]
        mat.node_tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
        me.materials.append(mat)


def render_views(glb: str, out: str, *, frames: int, views: int, heldout: int,
                 resolution: int, samples: int) -> dict:
    import bpy
    from mathutils import Matrix

    if not (1 <= frames <= MAX_FRAMES and 1 <= views + heldout <= MAX_VIEWS
            and 8 <= resolution <= MAX_RESOLUTION):
        raise ValueError(f"frames 1..{MAX_FRAMES}, views 1..{MAX_VIEWS}, "
                         f"resolution 8..{MAX_RESOLUTION}")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.import_scene.gltf(filepath=glb)
    objects = [o for o in scene.objects if o.type == "MESH"]
    if not objects:
        raise ValueError(f"{glb} has no meshes")
    _materials_without_colour_use_the_colour_attribute(bpy, objects)
    lo, hi = _frame_range(bpy, scene)
    # F frames evenly over the animation; a looping clip's closing key (== frame 0) is left out.
    frame_at = [lo + (hi - lo) * k / frames for k in range(frames)]

    depsgraph = bpy.context.evaluated_depsgraph_get()
    gt = []
    faces0 = None
    for f in frame_at:
        scene.frame_set(int(math.floor(f)), subframe=f - math.floor(f))
        depsgraph.update()
        v, faces = _evaluated_mesh(bpy, depsgraph, objects)
        if faces0 is None:
            faces0 = faces
        elif faces.shape != faces0.shape or not np.array_equal(faces, faces0):
            raise ValueError("the mesh's topology changes over the animation; the benchmark "
                             "needs one topology (morph targets, skins or object motion)")
        gt.append(v)
    gt = np.stack(gt)
    lo_b, hi_b = gt.reshape(-1, 3).min(0), gt.reshape(-1, 3).max(0)
    centre = (lo_b + hi_b) / 2
    extent = float(np.linalg.norm(gt.reshape(-1, 3) - centre, axis=1).max()) or 1.0
    scale = RADIUS / extent
    gt_norm = ((gt - centre) * scale).astype(np.float32)

    world = bpy.data.worlds.new("uniform_white")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (1, 1, 1, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.0
    scene.world = world
    r = scene.render
    r.engine, r.film_transparent = "CYCLES", True
    r.resolution_x = r.resolution_y = resolution
    r.resolution_percentage = 100
    r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGBA"
    r.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    cyc = scene.cycles
    cyc.device, cyc.samples, cyc.use_denoising = "CPU", samples, False
    cyc.max_bounces = cyc.diffuse_bounces = cyc.glossy_bounces = 0
    cyc.transmission_bounces = cyc.transparent_max_bounces = 0
    cyc.pixel_filter_type, cyc.filter_width = "BOX", 1.0  # pixel averages, as the fit expects

    cam_data = bpy.data.cameras.new("gt_cam")
    cam_data.sensor_fit, cam_data.sensor_width = "AUTO", 36.0
    cam_data.lens = 36.0 / (2 * math.tan(math.radians(FOV_DEG) / 2))
    cam_data.clip_start, cam_data.clip_end = 0.01 / scale, 100.0 / scale
    cam = bpy.data.objects.new("gt_cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam

    dirs = np.concatenate([view_directions(views), view_directions(heldout, phase=1.0)])
    cameras = []
    for d in dirs:
        eye = d * DISTANCE
        fwd = -d
        right = np.cross(fwd, (0, 0, 1))
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
        cameras.append({"matrix_world": m.tolist(), "resolution": [resolution, resolution],
                        "lens": cam_data.lens, "sensor_width": 36.0, "sensor_height": 24.0,
                        "sensor_fit": "AUTO", "shift_x": 0.0, "shift_y": 0.0})

    from PIL import Image

    images = np.zeros((frames, len(dirs), resolution, resolution, 4), np.uint8)
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        for k, f in enumerate(frame_at):
            scene.frame_set(int(math.floor(f)), subframe=f - math.floor(f))
            for j, c in enumerate(cameras):
                m = np.array(c["matrix_world"])
                m[:3, 3] = m[:3, 3] / scale + centre  # back to the file's world
                cam.matrix_world = Matrix(m.tolist())
                r.filepath = tmp
                bpy.ops.render.render(write_still=True)
                images[k, j] = np.asarray(Image.open(tmp).convert("RGBA"))
                print(json.dumps({"frame": k, "view": j}), flush=True)
    finally:
        os.remove(tmp)
    np.savez_compressed(
        out, images=images, cameras=json.dumps(cameras), heldout=np.arange(views, len(dirs)),
        times=np.arange(frames, dtype=np.float32) / frames, gt_vertices=gt_norm,
        gt_faces=faces0, centre=centre, scale=np.float64(scale),
        fps=np.float64(scene.render.fps), source=os.path.basename(glb))
    return {"frames": frames, "views": views, "heldout": heldout, "vertices": gt.shape[1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("glb")
    p.add_argument("out")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--heldout", type=int, default=4)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    a = p.parse_args(argv)
    info = render_views(a.glb, a.out, frames=a.frames, views=a.views, heldout=a.heldout,
                        resolution=a.resolution, samples=a.samples)
    print(json.dumps({"done": info}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
