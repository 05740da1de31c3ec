"""Interactive dynamics: pokes excite the modes of a result's motion (protocol/dynamics.py)."""

import math

import numpy as np
import pytest

from animate4d.protocol import AnimatedMesh
from animate4d.protocol import dynamics as dy
from animate4d.protocol import spectrum as sp
from animate4d.protocol.errors import InvalidRequestError

N, F = 100, 24
X = np.arange(N) / 100.0
REST = np.stack([X, np.zeros(N), np.zeros(N)], axis=1).astype(np.float32)
# Two local modes: a bump near vertex 20 swaying at 1 cycle per clip, one near vertex 80 at 3.
BUMP_A = np.exp(-((X - 0.2) / 0.05) ** 2)
BUMP_B = np.exp(-((X - 0.8) / 0.05) ** 2)


def swaying(loop=True, frames=F) -> AnimatedMesh:
    t = np.arange(frames)[:, None] / F
    z = 0.1 * BUMP_A * np.sin(2 * np.pi * t) + 0.05 * BUMP_B * np.sin(2 * np.pi * 3 * t + 1)
    frames_ = np.repeat(REST[None], frames, axis=0)
    frames_[..., 2] = z
    return AnimatedMesh(REST, [[0, 1, 2]], frames_, fps=24.0,
                        metadata={"loop": True} if loop else {})


def response(mesh, force, vertex=20, **kw):
    return sp.displacements(dy.poke(mesh, [dy.Poke(vertex, force)], **kw))


def test_modes_come_from_the_spectrum():
    m = dy.modes(swaying(), damping=0.2)
    assert m.shapes.shape == (11, N, 3) and m.damping == 0.2
    assert np.allclose(m.omega, 2 * np.pi * np.arange(1, 12) * 24 / F)
    size = np.sqrt((np.abs(m.shapes) ** 2).sum(-1))
    assert size.max() == pytest.approx(1.0)
    assert size[0].argmax() == 20 and size[2].argmax() == 80  # the bumps
    assert np.allclose(size[[1, 3, 4]], 0, atol=1e-6)


def test_twice_the_force_gives_twice_the_displacement():
    m = swaying()
    one = response(m, (0, 0, 0.05))
    two = response(m, (0, 0, 0.10))
    assert np.abs(one).max() > 1e-3
    assert np.allclose(two, 2 * one, atol=1e-7)


def test_zero_force_gives_the_rest_pose():
    m = swaying()
    out = dy.poke(m, [dy.Poke(20, (0, 0, 0))])
    assert np.array_equal(out.frames, np.repeat(m.vertices[None], F, axis=0))
    assert out.metadata["loop"] is False and out.metadata["edits"][-1]["edit"] == "poke"


def test_the_response_is_strongest_near_the_poke_and_starts_along_the_force():
    u = response(swaying(), (0, 0, 0.1), frames=48)
    size = np.abs(u[..., 2]).max(axis=0)
    assert size.argmax() == 20
    assert size[70:90].max() < 1e-3 * size[20]  # the far mode is not excited
    assert u[1, 20, 2] > 0  # the poked vertex moves the way it was pushed
    far = response(swaying(), (0, 0, 0.1), vertex=80, frames=48)
    assert np.abs(far[..., 2]).max(axis=0).argmax() == 80


def test_the_response_decays_at_the_damping_ratio():
    m = swaying()
    frames = 24 * 6  # six periods of the mode near vertex 20
    for z in (0.02, 0.1):
        u = response(m, (0, 0, 0.1), frames=frames, damping=z)[:, 20, 2]
        peaks = np.abs(u).reshape(6, 24).max(axis=1)
        assert np.all(np.diff(peaks) < 0)
        # The logarithmic decrement of a damped oscillator: one period shrinks by this much.
        want = math.exp(-2 * math.pi * z / math.sqrt(1 - z * z))
        assert peaks[3] / peaks[2] == pytest.approx(want, rel=0.03)
    energy = {z: np.square(response(m, (0, 0, 0.1), frames=frames, damping=z)[-24:]).sum()
              for z in (0.0, 0.05, 0.2)}
    assert energy[0.0] > energy[0.05] > energy[0.2]


def test_pokes_in_sequence_add_up():
    m = swaying()
    a, b = dy.Poke(20, (0, 0, 0.1)), dy.Poke(80, (0, 0.02, -0.1), frame=10)
    both = sp.displacements(dy.poke(m, [a, b], frames=40))
    each = sum(sp.displacements(dy.poke(m, [p], frames=40)) for p in (a, b))
    assert np.allclose(both, each, atol=1e-7)
    first = sp.displacements(dy.poke(m, [a], frames=40))
    assert np.array_equal(both[:11], first[:11])  # the second poke starts at its frame


def test_a_clip_that_does_not_loop_is_closed_for_its_modes():
    m = swaying(loop=False, frames=30)  # a loop and a quarter: the loop of 24 is found
    u = response(m, (0, 0, 0.1))
    assert np.abs(u[..., 2]).max(axis=0).argmax() == 20
    assert np.allclose(dy.modes(m).omega[0], 2 * np.pi)


@pytest.mark.parametrize(("poke", "kwargs", "words"), [
    (dy.Poke(N, (0, 0, 1)), {}, "vertex 100 is out of range: the mesh has 100 vertices"),
    (dy.Poke(-1, (0, 0, 1)), {}, "out of range"),
    (dy.Poke(3, (0, float("nan"), 1)), {}, "not finite"),
    (dy.Poke(3, (0, 1)), {}, "three numbers"),
    (dy.Poke(3, (0, 0, 1e9)), {}, "limit"),
    (dy.Poke(3, (0, 0, 1), frame=30), {}, "frame must be"),
    (dy.Poke(3, (0, 0, 1)), {"damping": 1.0}, "damping"),
    (dy.Poke(3, (0, 0, 1)), {"terms": 12}, "beyond this clip"),
    (dy.Poke(3, (0, 0, 1)), {"frames": 0}, "frames must be"),
])
def test_bad_pokes_say_what_is_wrong(poke, kwargs, words):
    with pytest.raises(InvalidRequestError, match=words):
        dy.poke(swaying(), [poke], **kwargs)


def test_a_still_clip_has_nothing_to_poke():
    still = AnimatedMesh(REST, [[0, 1, 2]], np.repeat(REST[None], 8, 0), metadata={})
    with pytest.raises(InvalidRequestError, match="does not move"):
        dy.poke(still, [dy.Poke(3, (0, 0, 1))])
    with pytest.raises(InvalidRequestError, match="no poke"):
        dy.poke(swaying(), [])
