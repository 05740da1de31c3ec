"""Mesh mode, preview: the artist's mesh keeps its topology, UVs and materials, and moves."""

import numpy as np
import pytest

from animate4d.backend.cli import main
from animate4d.backend.meshmode.load import load_mesh
from animate4d.backend.meshmode.preview import gltf_with_motion, run_mesh_preview
from animate4d.backend.meshmode.source import MeshSource, check_mesh
from animate4d.backend.meshmode.weights import bend_weights, root_mask
from animate4d.protocol import a4d
from animate4d.protocol.options import JobOptions
from tests.backend.meshes import (
    TRUNK_HEIGHT,
    accessor_bytes,
    glb_json,
    tree_arrays,
    tree_parts,
    write_tree_glb,
)
from tests.conftest import gltf_validate

DANCE = JobOptions(prompt="a tree is dancing", frames=12)  # sway + bounce + twist


@pytest.fixture(scope="module")
def tree_glb(tmp_path_factory):
    return write_tree_glb(tmp_path_factory.mktemp("tree") / "tree.glb")


@pytest.fixture(scope="module")
def tree_run(tree_glb):
    src = load_mesh(tree_glb)
    mesh = run_mesh_preview(src, DANCE)
    return src, mesh, gltf_with_motion(src, mesh)


def _tree(**kw):
    v, f, n_trunk = tree_arrays()
    return check_mesh(MeshSource(v, f, name="tree", **kw)), n_trunk


def test_the_glb_comes_back_with_its_own_data_and_one_morph_target_per_frame(tree_glb,
                                                                              tree_run):
    src, mesh, out = tree_run
    doc_in, bin_in = glb_json(tree_glb.read_bytes())
    doc, blob = glb_json(out)
    assert doc["materials"] == doc_in["materials"] and doc["textures"] == doc_in["textures"]
    assert doc["nodes"] == doc_in["nodes"]
    img_in, img = doc_in["images"][0], doc["images"][0]
    view_in, view = doc_in["bufferViews"][img_in["bufferView"]], \
        doc["bufferViews"][img["bufferView"]]
    assert bin_in[view_in["byteOffset"]:][: view_in["byteLength"]] == \
        blob[view["byteOffset"]:][: view["byteLength"]]  # the texture, byte for byte
    for m_in, m in zip(doc_in["meshes"], doc["meshes"], strict=True):
        for p_in, p in zip(m_in["primitives"], m["primitives"], strict=True):
            assert p["material"] == p_in["material"]
            for name in ("POSITION", "NORMAL", "TEXCOORD_0"):
                assert accessor_bytes(doc, blob, p["attributes"][name]) == \
                    accessor_bytes(doc_in, bin_in, p_in["attributes"][name]), name
            assert accessor_bytes(doc, blob, p["indices"]) == \
                accessor_bytes(doc_in, bin_in, p_in["indices"])
            assert len(p["targets"]) == DANCE.frames
            first = p["targets"][0]["POSITION"]
            assert not np.frombuffer(accessor_bytes(doc, blob, first), np.float32).any()
        assert m["extras"]["targetNames"][-1] == f"frame_{DANCE.frames - 1:04d}"
    (anim,) = doc["animations"]
    assert {c["target"]["path"] for c in anim["channels"]} == {"weights"}
    assert len(anim["channels"]) == 2  # one per animated node


def test_the_a4d_keeps_vertices_faces_and_uvs(tree_run):
    src, mesh, _ = tree_run
    trunk, crown = tree_parts()
    assert mesh.num_vertices == len(trunk.vertices) + len(crown.vertices)
    assert np.array_equal(mesh.faces, src.faces)
    assert np.array_equal(mesh.uvs, src.uvs) and mesh.uvs.shape == (mesh.num_vertices, 2)
    assert np.array_equal(mesh.frames[0], mesh.vertices)  # frame 0 is the input, exactly
    # glTF is Y up: the result's transform stands the tree up in Blender's axes.
    world = mesh.frame_world(0)
    assert world[:, 2].max() - world[:, 2].min() > 1.5 * np.ptp(world[:, 0])


@pytest.mark.node
def test_the_glb_passes_the_validator(tree_run, tmp_path):
    path = tmp_path / "tree_animated.glb"
    path.write_bytes(tree_run[2])
    report = gltf_validate(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert report["info"]["hasMorphTargets"] and report["info"]["animationCount"] == 1
    assert report["info"]["hasTextures"] and report["info"]["materialCount"] == 1


def test_frame_zero_is_exact_and_the_clip_loops():
    src, _ = _tree()
    mesh = run_mesh_preview(src, DANCE)
    assert np.abs(mesh.frames[0] - src.vertices).max() <= 1e-6
    # The clip moves, and loops: frame 0 follows the last frame as closely as any frame
    # follows the one before it (a clip that ended at rest would repeat frame 0 instead).
    frames = mesh.frames
    steps = np.abs(np.diff(np.concatenate([frames, frames[:1]]), axis=0)).max(axis=(1, 2))
    assert steps.max() > 0.01
    assert 0.2 * np.median(steps) < steps[-1] <= 1.5 * np.median(steps), steps


def test_motion_grows_away_from_the_root():
    src, _ = _tree()
    mesh = run_mesh_preview(src, JobOptions(prompt="swaying", frames=12))
    reach = np.linalg.norm(mesh.frames - mesh.vertices, axis=2).max(axis=0)
    z = src.vertices[:, 2]
    bands = [reach[(z >= a) & (z < b)].mean() for a, b in
             ((0.0, 0.02), (0.3, 0.4), (0.6, 0.7), (0.95, 1.05), (1.5, 2.0))]
    assert bands[0] < 1e-3
    assert all(b > a for a, b in zip(bands, bands[1:], strict=False)), bands


def test_a_part_resting_on_another_moves_with_it():
    src, n_trunk = _tree()
    diag = float(np.linalg.norm(np.ptp(src.vertices, axis=0)))
    for prompt in ("a tree is dancing", "nodding and breathing", "swaying in the wind"):
        mesh = run_mesh_preview(src, JobOptions(prompt=prompt, frames=16, amplitude=2.0))
        crown_low = n_trunk + int(np.argmin(src.vertices[n_trunk:, 2]))
        top = np.nonzero(src.vertices[:n_trunk, 2] > TRUNK_HEIGHT - 1e-6)[0]
        gap = np.linalg.norm(mesh.frames[:, top] - mesh.frames[:, [crown_low]], axis=2)
        assert np.abs(gap - gap[0]).max() <= 0.02 * diag, (prompt, np.abs(gap - gap[0]).max())
        crown_move = np.linalg.norm(mesh.frames[:, n_trunk:] - mesh.vertices[n_trunk:], axis=2)
        assert crown_move.max() > 0.05 * diag  # it does move


def test_split_vertices_move_together_so_seams_never_tear():
    v, f, _ = tree_arrays()
    # Every corner its own vertex (vertex c = corner c), as at a UV seam everywhere.
    soup = check_mesh(MeshSource(v[f].reshape(-1, 3), np.arange(f.size).reshape(-1, 3)))
    mesh = run_mesh_preview(soup, DANCE)
    order = np.argsort(f.ravel(), kind="stable")  # corners grouped by their original vertex
    same = f.ravel()[order][1:] == f.ravel()[order][:-1]
    paths = mesh.frames[:, order]
    assert same.sum() > len(v)  # most vertices have several corners
    assert np.abs(paths[:, 1:][:, same] - paths[:, :-1][:, same]).max() <= 1e-6
    assert np.abs(mesh.frames[1:] - mesh.frames[0]).max() > 0.01


def test_a_floating_part_moves_with_what_it_is_nearest_to():
    v, f, n_trunk = tree_arrays()
    v = v.copy()
    v[n_trunk:, 2] += 0.3  # the crown floats 0.3 above the trunk
    src = check_mesh(MeshSource(v, f))
    w = bend_weights(src.vertices, f, root_mask(src.vertices, None))
    assert np.isfinite(w).all()
    assert w[n_trunk:].min() > w[:n_trunk].max() - 1e-6  # reached beyond the trunk's top


def test_pinned_vertices_stay_and_the_rest_swings_about_them():
    v, f, n_trunk = tree_arrays()
    top = np.nonzero(v[:, 2] > v[:, 2].max() - 0.05)[0]  # hang it from the crown's top
    src = check_mesh(MeshSource(v, f, pin=top))
    mesh = run_mesh_preview(src, JobOptions(prompt="sway and nod", frames=8, motion=None))
    move = np.linalg.norm(mesh.frames - mesh.vertices, axis=2).max(axis=0)
    assert move[top].max() < 1e-3 * np.ptp(v[:, 2])
    assert move[np.argmin(v[:, 2])] > 0.05  # the far end (the trunk's foot) swings
    assert mesh.metadata["root"] == {"pinned": True, "vertices": len(top)}


def test_obj_quads_are_triangulated_for_the_solver_and_keep_their_vertices(tmp_path):
    lines = ["o slab"]
    for z in (0.0, 1.0, 2.0):
        lines += [f"v {x} {z} {y}" for x, y in ((0, 0), (1, 0), (1, 1), (0, 1))]  # Y up
    lines += [f"vt {u} {w}" for u, w in ((0, 0), (1, 0), (1, 1), (0, 1))] * 3
    for a in (0, 4):  # side quads between the rings
        for i in range(4):
            j = (i + 1) % 4
            q = [a + i + 1, a + j + 1, a + j + 5, a + i + 5]
            lines.append("f " + " ".join(f"{k}/{k}" for k in q))
    path = tmp_path / "slab.obj"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["run", str(path), "--prompt", "twisting", "--frames", "6", "--out", str(out),
                 "--no-preview", "--quiet"]) == 0
    mesh = a4d.load(out / "result.a4d")
    assert mesh.num_vertices == 12 and mesh.num_faces == 16 and mesh.uvs is not None
    world = mesh.frame_world(0)
    assert np.ptp(world[:, 2]) == pytest.approx(2.0)  # Y up in the file, Z up in Blender
    assert np.abs(mesh.frames[1:] - mesh.frames[0]).max() > 0.01


def test_an_a4d_result_can_be_animated_again_in_its_own_frame(tmp_path, tree_glb):
    first = tmp_path / "first"
    assert main(["run", str(tree_glb), "--prompt", "bounce", "--frames", "4", "--out",
                 str(first), "--no-preview", "--quiet"]) == 0
    again = tmp_path / "again"
    assert main(["run", str(first / "result.a4d"), "--prompt", "twist", "--frames", "5",
                 "--out", str(again), "--no-preview", "--quiet", "--pin", "0-3"]) == 0
    a, b = a4d.load(first / "result.a4d"), a4d.load(again / "result.a4d")
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.transform, b.transform)
    assert b.num_frames == 5 and b.metadata["root"]["pinned"]


def _bad(tmp_path, capsys, name, content, *extra):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code = main(["run", str(path), "--prompt", "sway", "--out", str(tmp_path / "o"),
                 "--quiet", *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name, content, words", [
    ("shot.glb", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "neither a .glb nor glTF"),
    ("cloud.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
    ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
    ("dot.obj", "v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "zero size"),
    ("empty.gltf", '{"asset": {"version": "2.0"}}', "holds no mesh"),
])
def test_bad_meshes_say_what_is_wrong(tmp_path, capsys, name, content, words):
    code, err = _bad(tmp_path, capsys, name, content)
    assert code == 2 and words in err and "Traceback" not in err, err


def test_bad_requests_in_mesh_mode(tmp_path, capsys, monkeypatch):
    tri = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    code, err = _bad(tmp_path, capsys, "t.obj", tri, "--pin", "7")
    assert code == 2 and "pinned vertex ids must be in 0..2" in err
    code, err = _bad(tmp_path, capsys, "t.obj", tri, "--pin", "x")
    assert code == 2 and "--pin takes vertex ids" in err
    code, err = _bad(tmp_path, capsys, "t.obj", tri, "--preset", "fast", "--models",
                     str(tmp_path / "no-models"))
    assert code == 2 and "fast preset in mesh mode needs the models video" in err
    assert "models fetch" in err and not (tmp_path / "o").exists()
    from animate4d.protocol import limits

    monkeypatch.setattr(limits, "MAX_FRAME_VERTICES", 30)
    code, err = _bad(tmp_path, capsys, "t.obj", tri, "--frames", "11")
    assert code == 2 and "at most 10 frames" in err
    monkeypatch.setattr(limits, "MAX_VERTICES", 2)
    code, err = _bad(tmp_path, capsys, "t.obj", tri)
    assert code == 2 and "at most 2" in err


@pytest.mark.blender
def test_blender_imports_the_glb_with_its_material_uvs_and_the_clip(tree_run, tmp_path):
    bpy = pytest.importorskip("bpy")
    src, mesh, out = tree_run
    path = tmp_path / "tree_animated.glb"
    path.write_bytes(out)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = int(mesh.fps)
    bpy.ops.import_scene.gltf(filepath=str(path))
    objs = sorted((o for o in scene.objects if o.type == "MESH"), key=lambda o: o.name)
    assert [o.name for o in objs] == ["crown", "trunk"]
    assert sum(len(o.data.vertices) for o in objs) == mesh.num_vertices
    for o in objs:
        assert len(o.data.shape_keys.key_blocks) == 1 + mesh.num_frames
        assert len(o.data.uv_layers) == 1
        (mat,) = o.data.materials
        assert any(n.type == "TEX_IMAGE" and n.image for n in mat.node_tree.nodes)
    for k in (0, 3, mesh.num_frames - 1):
        scene.frame_set(k)
        dg = bpy.context.evaluated_depsgraph_get()
        pts = []
        for o in objs:
            ev = o.evaluated_get(dg)
            me = ev.to_mesh()
            co = np.empty(len(me.vertices) * 3, np.float32)
            me.vertices.foreach_get("co", co)
            mw = np.array(o.matrix_world)
            pts.append(co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3])
            ev.to_mesh_clear()
        got, want = np.concatenate(pts), mesh.frame_world(k)
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(want, axis=0), atol=1e-4)


def _gltf_variant(tree_glb, tmp_path, change) -> str:
    """The tree as a .gltf (buffer in a data URI) after `change(doc)`."""
    import base64
    import json

    doc, blob = glb_json(tree_glb.read_bytes())
    doc["buffers"] = [{"byteLength": len(blob), "uri": "data:application/octet-stream;base64,"
                       + base64.b64encode(blob).decode()}]
    change(doc)
    path = tmp_path / "variant.gltf"
    path.write_text(json.dumps(doc))
    return path.read_text()


@pytest.mark.parametrize("change, words", [
    (lambda d: d["nodes"][0].update(mesh=9), "not valid glTF"),
    (lambda d: d["accessors"][1].update(count=10**9), "mesh mode reads at most"),
    (lambda d: d["accessors"][1].update(count=10**5), "runs past the end of its buffer"),
    (lambda d: d["nodes"][0].update(children=[0]), "not a tree"),
    (lambda d: d["nodes"][1].update(mesh=d["nodes"][0]["mesh"]), "instanced by several"),
    (lambda d: d.update(extensionsRequired=["KHR_draco_mesh_compression"]), "compressed"),
    (lambda d: d.update(animations=[{"samplers": [], "channels": [
        {"sampler": 0, "target": {"node": 0, "path": "weights"}}]}]), "morph-weight animation"),
])
def test_damaged_or_unsupported_gltf_says_what_is_wrong(tree_glb, tmp_path, capsys, change,
                                                         words):
    code, err = _bad(tmp_path, capsys, "variant.gltf", _gltf_variant(tree_glb, tmp_path, change))
    assert code == 2 and words in err and "Traceback" not in err, err


def test_a_gltf_with_its_buffer_beside_it_comes_back_as_one_glb(tree_glb, tmp_path):
    import json

    doc, blob = glb_json(tree_glb.read_bytes())
    (tmp_path / "tree.bin").write_bytes(blob)
    doc["buffers"] = [{"byteLength": len(blob), "uri": "tree.bin"}]
    (tmp_path / "tree.gltf").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "tree.gltf"), "--prompt", "nod", "--frames", "3",
                 "--out", str(out), "--no-preview", "--quiet"]) == 0
    got, got_blob = glb_json((out / "result.glb").read_bytes())
    assert "uri" not in got["buffers"][0] and len(got_blob) > len(blob)
    assert len(got["meshes"][0]["primitives"][0]["targets"]) == 3
    (tmp_path / "tree.bin").unlink()
    code = main(["run", str(tmp_path / "tree.gltf"), "--prompt", "nod", "--out", str(out),
                 "--quiet"])
    assert code == 2
