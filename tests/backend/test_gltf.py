"""The .glb passes the Khronos validator and plays in real Blender as the result says."""

import json
import struct

import numpy as np
import pytest

from animate4d.backend.export.gltf import srgb_to_linear, to_glb, write_glb
from animate4d.backend.preview.pipeline import run_preview
from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions
from tests.conftest import blob_rgba, gltf_validate, write_png


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    d = tmp_path_factory.mktemp("gltf")
    png = write_png(d / "blob.png", blob_rgba(200, 240))
    mesh = run_preview(png, JobOptions(prompt="a creature is dancing", frames=7, fps=12.0,
                                       mesh_resolution=96, target=[0.3, 1.0, 0.5]))
    return mesh, write_glb(mesh, d / "result.glb")


def _gltf_json(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    js_len, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + js_len])


@pytest.mark.node
def test_validator_reports_no_errors(result):
    mesh, path = result
    report = gltf_validate(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"][:5]
    info = report["info"]
    assert info["animationCount"] == 1
    assert info["hasMorphTargets"] is True


def test_one_morph_target_per_frame_and_a_step_animation(result):
    mesh, path = result
    doc = _gltf_json(path)
    prim = doc["meshes"][0]["primitives"][0]
    assert len(prim["targets"]) == mesh.num_frames
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(prim["attributes"])
    (anim,) = doc["animations"]
    (sampler,) = anim["samplers"]
    assert sampler["interpolation"] == "STEP"
    assert anim["channels"][0]["target"]["path"] == "weights"
    times = doc["accessors"][sampler["input"]]
    # frame i at i / fps, plus the closing key that loops back to frame 0
    assert times["count"] == mesh.num_frames + 1
    assert times["max"] == [pytest.approx(mesh.num_frames / mesh.fps)]


def test_colours_are_written_linear():
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.5, 1.0])),
                               [0.0, 0.21404114, 1.0], atol=1e-7)


@pytest.mark.node
def test_shearing_transform_is_baked_and_still_valid(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    t = np.eye(4)
    t[0, 1] = 0.5  # shear: not expressible as a glTF node TRS
    mesh = AnimatedMesh(vertices=v, faces=f, frames=np.stack([v, v * 1.1]), transform=t,
                        metadata={"loop": False})
    p = tmp_path / "shear.glb"
    p.write_bytes(to_glb(mesh))
    assert gltf_validate(p)["issues"]["numErrors"] == 0
    node = _gltf_json(p)["nodes"][0]
    assert "matrix" not in node and "translation" not in node


@pytest.mark.blender
def test_blender_imports_one_shape_key_per_frame_and_plays_them(result):
    bpy = pytest.importorskip("bpy")
    mesh, path = result
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = int(mesh.fps)
    bpy.ops.import_scene.gltf(filepath=str(path))
    (obj,) = [o for o in scene.objects if o.type == "MESH"]
    keys = obj.data.shape_keys.key_blocks
    assert len(keys) == mesh.num_frames + 1  # Basis + one per frame
    assert len(obj.data.vertices) == mesh.num_vertices
    np.testing.assert_allclose(np.array(obj.matrix_world), mesh.transform, atol=1e-5)
    assert len(obj.data.color_attributes) >= 1

    depsgraph = bpy.context.evaluated_depsgraph_get()
    for k in [0, 1, mesh.num_frames // 2, mesh.num_frames - 1]:
        scene.frame_set(k)
        evaluated = obj.evaluated_get(depsgraph)
        me = evaluated.to_mesh()
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        evaluated.to_mesh_clear()
        np.testing.assert_allclose(co.reshape(-1, 3), mesh.frames[k], atol=1e-5)
    # The loop closes: one frame past the end is frame 0 again.
    scene.frame_set(mesh.num_frames)
    assert keys[1].value == pytest.approx(1.0)
