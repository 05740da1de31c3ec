import numpy as np
import pytest

from animate4d.backend.preview.motion import (
    DEFAULT_MODES,
    MODES,
    MotionSpec,
    animate,
    cycles_for,
    modes_from_prompt,
    parse_modes,
    pose,
)
from animate4d.protocol.errors import InvalidRequestError


@pytest.fixture(scope="module")
def column():
    """Points of an upright column: base at z=0, top at z=1."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.2, 0.2, size=(2000, 3))
    pts[:, 2] = rng.uniform(0.0, 1.0, 2000)
    pts[:3, 2] = [0.0, 1.0, 0.5]
    return pts


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_loops_and_starts_at_rest(column, mode):
    spec = MotionSpec(modes=(mode,), amplitude=1.5, cycles=3)
    np.testing.assert_allclose(pose(column, spec, 0.0), column, atol=1e-12)
    np.testing.assert_allclose(pose(column, spec, 1.0), column, atol=1e-9)
    frames = animate(column, spec, 24)
    assert frames.shape == (24, len(column), 3)
    # The clip really moves, and the motion is smooth: frame F (== frame 0) follows F-1 as
    # closely as any frame follows the one before it.
    steps = np.abs(np.diff(np.concatenate([frames, frames[:1]]), axis=0)).max(axis=(1, 2))
    assert steps.max() > 1e-3
    assert steps[-1] <= 1.5 * np.median(steps) + 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_motion_is_rooted_at_the_base(column, mode):
    frames = animate(column, MotionSpec(modes=(mode,), amplitude=1.0), 16)
    disp = np.linalg.norm(frames - column[None].astype(np.float32), axis=2).max(axis=0)
    base = column[:, 2] < 0.02
    body = column[:, 2] > 0.3
    # The base is nearly still next to the part that moves most (the top, or for breathe the
    # middle).
    assert disp[base].max() < 0.2 * disp[body].max()


def test_amplitude_scales_and_zero_is_still(column):
    still = animate(column, MotionSpec(modes=("sway", "bounce"), amplitude=0.0), 8)
    np.testing.assert_allclose(still, np.broadcast_to(column, still.shape), atol=1e-6)
    small = animate(column, MotionSpec(modes=("sway",), amplitude=0.5), 8)
    big = animate(column, MotionSpec(modes=("sway",), amplitude=1.0), 8)
    d_small = np.abs(small - column).max()
    d_big = np.abs(big - column).max()
    assert 1.7 < d_big / d_small < 2.3


def test_prompt_words_choose_modes():
    assert set(modes_from_prompt("a panda is dancing")) == {"sway", "bounce", "twist"}
    assert modes_from_prompt("A flower SWAYS in the wind") == ("sway",)
    assert modes_from_prompt("a frog jumping") == ("bounce",)
    assert modes_from_prompt("a sleeping cat, breathing slowly") == ("breathe",)
    assert modes_from_prompt("an owl turns its head and nods") == ("twist", "nod")
    assert modes_from_prompt("a teapot") == ()
    assert DEFAULT_MODES


def test_parse_modes_names_the_choices():
    assert parse_modes("sway, bounce,sway") == ("sway", "bounce")
    with pytest.raises(InvalidRequestError, match="choose from sway"):
        parse_modes("moonwalk")


def test_speed_becomes_whole_cycles():
    assert cycles_for(1.0, 24, 24.0) == 1
    assert cycles_for(2.4, 48, 24.0) == 5
    assert cycles_for(0.01, 24, 24.0) == 1  # at least one cycle, so the loop closes
