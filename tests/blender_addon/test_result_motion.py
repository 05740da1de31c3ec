"""The Result Motion panel in real Blender: Loop, Amplitude, Speed, Frames and Poke re-bake a
result's shape keys in place, with no server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.blender


def test_motion_controls_and_poke_rebake_the_keys(tmp_path):
    pytest.importorskip("bpy")
    out = tmp_path / "obs.json"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "motion_scenario.py"),
                        str(out), str(tmp_path / "scene.blend")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "SCENARIO DONE" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
    obs = json.loads(out.read_text())
    assert obs["panel_polls"]
    # Loop + amplitude 1.5 + speed 2: frame k shows the edited clip's frame k.
    assert obs["apply"] == ["FINISHED"]
    assert obs["apply_frames"] == [16, 16]  # the sway's period, found; two cycles in it
    assert obs["apply_error"] < 1e-5 and obs["loop_flag"]
    assert obs["frame_range"] == [5, 20]  # the scene's range follows the clip
    assert obs["frames_error"] < 1e-5  # Frames 20, edited from the source again
    assert obs["undo_options"] == ["REGISTER", "UNDO"]
    assert obs["group_still"] < 1e-6 and obs["group_rest_error"] < 1e-6
    assert obs["identity_error"] < 1e-6  # amplitude 1, speed 1: the clip as it came
    # Poke: the response clip, baked; a second poke adds at the current frame.
    assert obs["poke"] == ["FINISHED"]
    assert obs["poke_error"] < 1e-5 and obs["poke_moves"] > 0.01
    assert obs["poke2_error"] < 1e-5
    assert obs["edit_mode_poke"] == ["FINISHED"] and obs["mode_after"] == "OBJECT"
    assert obs["edit_mode_pokes"][0][0] == 100
    assert obs["no_vertex"][0] == "CANCELLED" and "Select the vertex" in obs["no_vertex"][1]
    assert obs["no_group"][0] == "CANCELLED" and "missing" in obs["no_group"][1]
    # The source survives saving, so the original motion comes back after reopening.
    assert obs["source_kept"] and obs["restore"] == ["FINISHED"]
    assert obs["restore_error"] < 1e-6
