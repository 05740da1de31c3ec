"""`animate4d edit` and `animate4d poke`: the files they write and their answers to bad input."""

import numpy as np
import pytest

from animate4d.backend.cli import main
from animate4d.protocol import AnimatedMesh, a4d
from animate4d.protocol import dynamics as dy
from animate4d.protocol import spectrum as sp
from tests.motion_clips import swaying_sheet as grid_clip


@pytest.fixture
def clip_file(tmp_path):
    return a4d.save(grid_clip(period=16, loop=False), tmp_path / "in.a4d")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_edit_loop_writes_the_three_files_of_a_loop(clip_file, tmp_path, capsys):
    out = tmp_path / "looped"
    code, stdout, err = run(capsys, "edit", clip_file, "--loop", "--out", out)
    assert code == 0, err
    assert [p.rsplit("/", 1)[-1] for p in stdout.split()] == ["result.a4d", "result.glb",
                                                              "preview.gif"]
    mesh = a4d.load(out / "result.a4d")
    src = a4d.load(clip_file)
    assert mesh.metadata["loop"] is True and mesh.metadata["seed"] == 3
    assert mesh.num_frames == 16  # the sway's period, found
    assert np.abs(mesh.frames[0] - src.frames[16]).max() < 1e-6  # frame N is frame 0
    assert (out / "result.glb").stat().st_size > 0 and (out / "preview.gif").stat().st_size > 0


def test_edit_is_the_protocols_edit(clip_file, tmp_path, capsys):
    code, _, err = run(capsys, "edit", clip_file, "--loop", "--amplitude", 2, "--speed", 2,
                       "--reverse", "--band", "2=0.5", "--out", tmp_path / "o", "--no-preview")
    assert code == 0, err
    got = a4d.load(tmp_path / "o" / "result.a4d")
    want = sp.edit(a4d.load(clip_file), loop=True, amplitude=2.0, speed=2.0, reverse_=True,
                   bands={2: 0.5})
    assert got.equals(want)
    assert [e["edit"] for e in got.metadata["edits"]] == ["loop", "amplitude", "reverse",
                                                          "retime"]
    assert not (tmp_path / "o" / "preview.gif").exists()


def test_edit_weights_from_a_file(clip_file, tmp_path, capsys):
    w = np.zeros(36)
    w[18:] = 1.0
    np.save(tmp_path / "w.npy", w)
    code, _, err = run(capsys, "edit", clip_file, "--amplitude", 0, "--weights",
                       tmp_path / "w.npy", "--out", tmp_path / "o", "--quiet", "--no-preview")
    assert code == 0, err
    got, src = a4d.load(tmp_path / "o" / "result.a4d"), a4d.load(clip_file)
    assert np.array_equal(got.frames[:, :18], src.frames[:, :18])
    assert np.allclose(got.frames[:, 18:], src.vertices[18:], atol=1e-7)


def test_poke_writes_the_response_clip(tmp_path, capsys):
    src = a4d.save(grid_clip(), tmp_path / "in.a4d")
    code, stdout, err = run(capsys, "poke", src, "--vertex", 35, "--force", "0,0.1,0",
                            "--vertex", 5, "--force=-0.05,0,0", "--at", 0, "--at", 8,
                            "--damping", 0.2, "--frames", 40, "--out", tmp_path / "p",
                            "--no-preview")
    assert code == 0, err
    got = a4d.load(tmp_path / "p" / "result.a4d")
    want = dy.poke(grid_clip(), [dy.Poke(35, (0, 0.1, 0)), dy.Poke(5, (-0.05, 0, 0), 8)],
                   frames=40, damping=0.2)
    assert got.equals(want) and got.num_frames == 40
    assert np.abs(got.frames - got.vertices).max() > 0.01


def test_not_an_animation(tmp_path, capsys):
    still = grid_clip()
    still = AnimatedMesh(still.vertices, still.faces, still.vertices[None], metadata={})
    path = a4d.save(still, tmp_path / "still.a4d")
    code, _, err = run(capsys, "edit", path, "--loop", "--out", tmp_path / "o")
    assert code == 2 and "at least 4 frames; this one has 1" in err
    (tmp_path / "x.a4d").write_bytes(b"GIF89a")
    code, _, err = run(capsys, "poke", tmp_path / "x.a4d", "--vertex", 0, "--force", "0,0,1",
                       "--out", tmp_path / "o")
    assert code == 2 and "not an animate4d mesh" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["poke", "--vertex", 36, "--force", "0,0,1"], "vertex 36 is out of range"),
    (["poke", "--vertex", 3, "--force", "0,nan,1"], "not finite"),
    (["poke", "--vertex", 3, "--force", "0,1"], "--force must be X,Y,Z"),
    (["poke", "--vertex", 3, "--vertex", 4, "--force", "0,0,1"], "one force per poked vertex"),
    (["poke", "--vertex", 3, "--force", "0,0,1", "--terms", 12], "beyond this clip"),
    (["edit", "--terms", 16], "16 Fourier terms is beyond this clip"),
    (["edit", "--band", "1:2"], "TERM=GAIN"),
    (["edit", "--speed", 100], "speed must be"),
    (["edit", "--weights", "missing.npy"], "cannot read the weights"),
    (["edit"], "nothing to edit"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, args, words):
    src = a4d.save(grid_clip(), tmp_path / "in.a4d")
    code, _, err = run(capsys, args[0], src, *args[1:], "--out", tmp_path / "o")
    assert code == 2, err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
