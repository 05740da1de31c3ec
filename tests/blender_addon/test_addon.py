"""The Blender extension: built, installed with Blender's own installer, used end to end."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.backend.cluster import Cluster, free_port
from tests.conftest import blob_rgba, write_png

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_addon.py"), "--out",
                        str(out), "--platform", "linux-x64"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def test_the_zip_is_a_complete_extension(addon_zip):
    import tomllib

    with zipfile.ZipFile(addon_zip) as z:
        names = set(z.namelist())
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert {"__init__.py", "engine.py", "importer.py", "protocol/client.py",
            "protocol/wire.py"} <= names
    assert manifest["id"] == "animate4d" and manifest["platforms"] == ["linux-x64"]
    assert set(manifest["permissions"]) == {"network", "files"}
    wheels = manifest["wheels"]
    assert all(w.removeprefix("./") in names for w in wheels)
    for py in ("cp311", "cp313"):  # Blender 4.2-5.0 and 5.1+
        assert any("msgspec" in w and py in w for w in wheels), py
    assert any("pyzmq" in w for w in wheels)
    # No pip at run time; neither the backend nor torch is imported in Blender (the local
    # server is started as a separate process with the backend's own Python).
    for name, text in sources.items():
        assert "pip install" not in text and "import torch" not in text, name
        assert "from animate4d.backend" not in text and "import animate4d.backend" not in text


def test_animate_from_blender_against_a_live_server(addon_zip, tmp_path, tiny_models):
    cluster = Cluster(tmp_path / "store", throttle=0.05)
    try:
        cluster.start_server()
        cluster.start_worker()
        cluster.client().close()
        image = write_png(tmp_path / "creature.png", blob_rgba(300, 360))
        out = tmp_path / "obs.json"
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"))
        r = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "scenario.py"), str(addon_zip),
             cluster.client_addr, str(image), str(out), str(tmp_path / "scene.blend"),
             str(tiny_models), str(free_port())],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert "SCENARIO DONE" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
        obs = json.loads(out.read_text())
    finally:
        cluster.stop()
    assert obs["install"] == ["FINISHED"]
    assert obs["protocol_from"] == "bl_ext.user_default.animate4d.protocol.client"  # bundled
    assert obs["no_prompt"] == ["CANCELLED"] and "prompt" in obs["no_prompt_status"]
    assert obs["animate"] == ["FINISHED"] and obs["imported"], obs
    assert obs["mesh_objects"] == 1
    assert obs["shape_keys"] == obs["frames"] + 1 == 7
    assert max(obs["frame_errors"]) < 1e-5
    assert obs["colours"] and obs["material"]
    assert obs["matrix_error"] < 1e-5
    assert obs["frame_range"] == [1, 6]
    assert obs["iou"] >= 0.9, obs["iou"]
    assert obs["export_glb"] == obs["export_abc"] == ["FINISHED"]
    assert (tmp_path / "out.glb").stat().st_size > 0 and (tmp_path / "out.abc").stat().st_size > 0
    assert obs["cancel"] == ["FINISHED"] and obs["cancelled"], obs["cancel_status"]
    assert "cancelled" in obs["cancel_status"]
    # Mesh mode: the frames land on the selected object itself, which keeps the rest.
    assert obs["mesh_animate"] == ["FINISHED"]
    assert obs["mesh_job"][:2] == ["done", "Artist"], obs["mesh_job"]
    assert obs["scenes_after_mesh_mode"] == 1  # the render scene was cleaned up
    keys = obs["mesh_keys"]
    assert keys[:2] == ["Basis", "Smile"] and len(keys) == 2 + 6, keys
    assert obs["mesh_uv_layers"] == ["UVMap", "Second"]
    assert obs["mesh_materials"] == ["Skin"]
    assert obs["mesh_groups"] == ["root", "Other"]
    assert obs["mesh_modifiers"] == ["SUBSURF"]
    assert obs["mesh_objects_added"] == 0
    assert max(obs["mesh_frame_errors"]) < 1e-5, obs["mesh_frame_errors"]
    assert obs["mesh_motion"] > 0.02
    count, root = obs["mesh_pinned"]
    assert root == {"pinned": True, "vertices": count} and count > 0
    assert obs["keys_after_undo"] == ["Basis", "Smile"] and obs["jobs_after_undo"] == 3
    made, dup_keys, dup_modifiers, original_keys = obs["duplicate"]
    assert made and dup_keys == 2 + 4 and dup_modifiers == ["SUBSURF"] and original_keys == 2
    assert obs["loop_options"] == ["paper", True, 6], obs["loop_options"]
    mods, no_keys, errors, cache_exists, told = obs["long_clip"]
    assert mods == ["MESH_SEQUENCE_CACHE"] and no_keys and cache_exists and told, obs["long_clip"]
    assert max(errors) < 1e-5, errors  # frame k of the cache is frame k of the result
    assert obs["rerun"] == ["FINISHED"] and obs["rerun_settings"] == [True, 6, 1, True], obs
    eta, text, long = obs["eta"]
    assert eta == pytest.approx(5.4) and text == "5 s" and long == "1 h 05 min", obs["eta"]
    log_path, log = obs["local_log"]
    assert log_path.startswith(str(tmp_path / "local-store")), log_path
    assert "serve: clients on" in log and "presets: fast, paper, preview" in log, log
    assert obs["mesh_fast"][0] == "failed" and "not supported" in obs["mesh_fast"][2], \
        obs["mesh_fast"]
    # The latest preview (8 x 8, green), packed: not a temp file every Blender shares.
    size, pixel, packed = obs["preview"]
    assert size == [8, 8] and pixel == [0.0, 1.0, 0.0, 1.0] and packed, obs["preview"]
    assert [s for _, s in obs["jobs_after_reopen"]] == ["done", "cancelled"]
    assert obs["down_animate"] == ["FINISHED"]
    assert "unreachable" in obs["down_status"], obs["down_status"]
