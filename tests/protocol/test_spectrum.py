"""Motion as a spectrum: Fourier terms, loop closing and the edits (protocol/spectrum.py)."""

import numpy as np
import pytest

from animate4d.protocol import AnimatedMesh, limits
from animate4d.protocol import spectrum as sp
from animate4d.protocol.errors import InvalidRequestError

RNG = np.random.default_rng(7)
N = 40
REST = RNG.normal(size=(N, 3)).astype(np.float32)
SHAPE_A = RNG.normal(size=(N, 3)).astype(np.float32) * 0.1
SHAPE_B = RNG.normal(size=(N, 3)).astype(np.float32) * 0.05


def clip(frames: int, period: float, *, loop=False, drift=0.0, fps=24.0) -> AnimatedMesh:
    """Two harmonics of `period` frames (plus a drift that breaks the loop)."""
    t = np.arange(frames)[:, None, None]
    d = (SHAPE_A * np.sin(2 * np.pi * t / period)
         + SHAPE_B * np.cos(2 * np.pi * 2 * t / period + 0.3) + drift * t / frames)
    return AnimatedMesh(REST, [[0, 1, 2]], REST + d, fps=fps,
                        metadata={"loop": True} if loop else {"prompt": "x"})


def motion(frames, period, t):
    """The exact displacement of `clip` at times t (frames)."""
    t = np.asarray(t, float)[:, None, None]
    return (SHAPE_A * np.sin(2 * np.pi * t / period)
            + SHAPE_B * np.cos(2 * np.pi * 2 * t / period + 0.3))


def test_terms_hold_the_motion_and_synthesize_it_at_any_time():
    m = clip(24, 24, loop=True)
    c = sp.terms(sp.displacements(m))
    assert c.shape == (12, N, 3)  # the mean and 11 terms: all 24 frames hold, <= 16
    assert np.allclose(c[0], 0, atol=1e-6)
    assert np.allclose(c[1], -1j * SHAPE_A, atol=1e-6)  # sin = Re(-i e^{i w t})
    assert np.allclose(c[2], SHAPE_B * np.exp(0.3j), atol=1e-6)
    assert np.allclose(c[3:], 0, atol=1e-6)
    t = [0, 5, 7.5, 24, 31.25]
    assert np.allclose(sp.synthesize(c, 24, t), motion(24, 24, t), atol=1e-6)


def test_loop_finds_the_period_and_the_clip_continues_into_frame_0():
    m = clip(24, 16)  # a cycle and a half: frame 24 is not frame 0
    out = sp.edit(m, loop=True)
    assert out.num_frames == 16 and out.metadata["loop"] is True
    assert out.metadata["edits"][-1] == {"edit": "loop", "period": 16, "cycles": 1}
    assert out.metadata["prompt"] == "x"  # the rest of the metadata is kept
    assert np.allclose(sp.displacements(out), motion(24, 16, range(16)), atol=1e-6)
    # frame N of the loop is frame 0: the clip's own frame 16 is the loop's frame 0
    assert np.abs(out.frames[0] - m.frames[16]).max() < 1e-6


def test_loop_of_a_drifting_clip_has_no_seam():
    m = clip(30, 30, drift=0.5)
    d = sp.displacements(m)
    out = sp.close_loop(m)
    assert out.num_frames == 30  # no better period than the whole clip
    e = sp.displacements(out)
    steps = np.abs(np.diff(e, axis=0)).max(axis=(1, 2))
    seam = np.abs(e[0] - e[-1]).max()
    assert np.abs(d[0] - d[-1]).max() > 4 * np.abs(np.diff(d, axis=0)).max()  # a jump before
    assert seam <= 1.5 * steps.max()  # after: the seam is a step like any other
    # Its frame N, the continuation of its last frames, meets frame 0 within a step's curvature.
    cont = 2 * e[-1] - e[-2]
    assert np.abs(cont - e[0]).max() <= np.abs(np.diff(e, 2, axis=0)).max() + 1e-6
    # Away from the seam the clip's own motion is kept.
    assert np.allclose(e[10:20], d[10:20] - (d[10:20].mean(0) - e[10:20].mean(0)), atol=0.02)


def test_a_loop_not_marked_as_one_is_barely_changed():
    m = clip(24, 24)  # loops, but its metadata does not say so
    out = sp.close_loop(m)
    assert out.num_frames == 24
    change = np.abs(out.frames - m.frames).max() / np.abs(sp.displacements(m)).max()
    assert change < 0.01  # the seam's jump is estimated to third order: about nothing here


def test_a_clip_that_loops_is_left_as_it_is():
    m = clip(24, 24, loop=True)
    out = sp.close_loop(m)
    assert out.frames.tobytes() == m.frames.tobytes()
    assert out.metadata["edits"][-1]["already"] is True


def test_amplitude_1_and_speed_1_are_the_identity():
    for m in (clip(24, 24, loop=True), clip(20, 13)):
        out = sp.edit(m, amplitude=1.0, speed=1.0)
        assert out.num_frames == m.num_frames and out.fps == m.fps
        assert np.abs(out.frames - m.frames).max() <= 1e-6
        assert np.abs(sp.retime(m, speed=1.0).frames - m.frames).max() <= 1e-6
        assert np.abs(sp.scale_amplitude(m, 1.0).frames - m.frames).max() <= 1e-6


@pytest.mark.parametrize("a", [0.0, 0.4, 2.5])
def test_amplitude_scales_every_displacement(a):
    m = clip(20, 13)
    out = sp.scale_amplitude(m, a)
    assert np.allclose(sp.displacements(out), a * sp.displacements(m), atol=1e-6)
    assert out.metadata["edits"][-1] == {"edit": "amplitude", "amplitude": a}


def test_amplitude_per_band_and_per_vertex():
    m = clip(24, 24, loop=True)
    out = sp.scale_amplitude(m, 1.0, bands={2: 0.0, 1: 3.0})
    c = sp.terms(sp.displacements(out))
    assert np.allclose(c[1], -3j * SHAPE_A, atol=1e-5) and np.allclose(c[2], 0, atol=1e-6)
    w = np.zeros(N)
    w[: N // 2] = 1.0
    w[N // 2] = 0.5
    out = sp.scale_amplitude(m, 3.0, weights=w)
    d, e = sp.displacements(m), sp.displacements(out)
    assert np.allclose(e[:, : N // 2], 3 * d[:, : N // 2], atol=1e-6)
    assert np.allclose(e[:, N // 2], 2 * d[:, N // 2], atol=1e-6)
    assert np.abs(e[:, N // 2 + 1:] - d[:, N // 2 + 1:]).max() == 0


@pytest.mark.parametrize(("speed", "frames", "n", "cycles"),
                         [(2.0, None, 24, 2), (1.5, None, 32, 2), (0.5, None, 48, 1),
                          (1.0, 30, 30, 1), (1.0, 36, 36, 2), (1.3, 10, 10, 1)])
def test_a_speed_change_keeps_the_loop(speed, frames, n, cycles):
    m = clip(24, 24, loop=True)
    out = sp.retime(m, speed=speed, frames=frames)
    assert out.num_frames == n and out.metadata["loop"] is True
    entry = out.metadata["edits"][-1]
    assert entry["cycles"] == cycles and entry["frames"] == n
    # Whole cycles: the motion at the clip's end (frame n) is frame 0's, and every frame is the
    # original motion at its new time.
    t = np.arange(n + 1) * cycles * 24 / n
    want = motion(24, 24, t)
    assert np.allclose(sp.displacements(out), want[:n], atol=1e-5)
    assert np.allclose(want[n], sp.displacements(out)[0], atol=1e-6)
    assert entry["speed"] == pytest.approx(cycles * 24 / n)


def test_fps_change_keeps_the_duration_and_the_speed():
    m = clip(24, 24, loop=True)
    out = sp.edit(m, fps=48)
    assert out.num_frames == 48 and out.fps == 48.0
    assert np.allclose(sp.displacements(out), motion(24, 24, np.arange(48) / 2), atol=1e-5)


def test_retime_of_a_one_shot_plays_it_once():
    m = clip(21, 13)
    out = sp.retime(m, speed=2.0)
    assert out.num_frames == 11 and out.metadata["loop"] is False
    assert np.allclose(out.frames, m.frames[::2], atol=1e-6)
    held = sp.retime(m, speed=2.0, frames=14)
    assert np.allclose(held.frames[10:], m.frames[20], atol=1e-6)
    slow = sp.retime(m, speed=0.5)
    assert slow.num_frames == 41
    assert np.allclose(slow.frames[1], (m.frames[0] + m.frames[1]) / 2, atol=1e-6)


def test_reverse_keeps_a_loops_frame_0():
    m = clip(24, 24, loop=True)
    out = sp.reverse(m)
    assert np.array_equal(out.frames[0], m.frames[0])
    assert np.array_equal(out.frames[1], m.frames[23])
    one = sp.reverse(clip(20, 13))
    assert np.array_equal(one.frames[0], clip(20, 13).frames[19])


def test_low_pass_keeps_the_lowest_terms():
    out = sp.low_pass(clip(24, 24, loop=True), 1)
    assert np.allclose(sp.displacements(out), SHAPE_A * np.sin(
        2 * np.pi * np.arange(24)[:, None, None] / 24), atol=1e-6)


def test_edits_are_recorded_and_the_record_is_bounded():
    m = clip(24, 24, loop=True)
    out = sp.edit(m, amplitude=2.0, reverse_=True, speed=2.0)
    assert [e["edit"] for e in out.metadata["edits"]] == ["amplitude", "reverse", "retime"]
    for _ in range(limits.MAX_EDITS_RECORDED + 5):
        m = sp.reverse(m)
    assert len(m.metadata["edits"]) == limits.MAX_EDITS_RECORDED


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"terms": 16}, "beyond this clip"),  # a 24-frame loop holds 11
    ({"terms": 17}, "at most 16"),
    ({"bands": {13: 2.0}}, "band 13 is beyond"),
    ({"period": 5}, "add --loop"),
    ({"loop": True, "period": 30}, "3..24"),
    ({"amplitude": -1}, "amplitude must be"),
    ({"amplitude": float("nan")}, "amplitude must be"),
    ({"speed": 0}, "speed must be"),
    ({"frames": 0}, "frames must be"),
    ({"fps": float("inf")}, "fps must be"),
    ({"weights": np.ones(3)}, "one per vertex"),
    ({"weights": np.full(N, 2.0)}, "0..1"),
])
def test_bad_edits_say_what_is_wrong(kwargs, words):
    with pytest.raises(InvalidRequestError, match=words):
        sp.edit(clip(24, 24, loop=True), **kwargs)


def test_edits_that_need_a_loop_or_an_animation_say_so():
    with pytest.raises(InvalidRequestError, match="does not loop"):
        sp.edit(clip(24, 13), bands={1: 2.0})
    with pytest.raises(InvalidRequestError, match="does not loop"):
        sp.edit(clip(24, 13), terms=3)
    sp.edit(clip(24, 13), loop=True, terms=3)  # closing the loop first makes it one
    still = AnimatedMesh(REST, [[0, 1, 2]], REST[None], metadata={})
    with pytest.raises(InvalidRequestError, match="has 1"):
        sp.edit(still, amplitude=2.0)
    with pytest.raises(InvalidRequestError, match="at least 4 frames"):
        sp.edit(clip(3, 3), loop=True)


def test_limits_from_outside_are_checked():
    n = limits.MAX_FRAME_VERTICES // limits.MAX_FRAMES + 1
    rest = np.zeros((n, 3), np.float32)
    frames = np.zeros((4, n, 3), np.float32)
    frames[:, 0, 0] = [0, 1, 0, -1]
    m = AnimatedMesh(rest, [[0, 1, 2]], frames, metadata={"loop": True})
    with pytest.raises(InvalidRequestError, match="vertex positions"):
        sp.retime(m, frames=limits.MAX_FRAMES)
    with pytest.raises(InvalidRequestError, match="frames must be"):
        sp.retime(m, frames=limits.MAX_FRAMES + 1)
