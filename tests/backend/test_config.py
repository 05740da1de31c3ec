"""The config tree: dotted-path changes, as code and as command-line `PATH=VALUE`."""

import pytest

from animate4d.backend.config import ConfigError, override, parse_changes
from animate4d.backend.pipeline.config import PAPER


def test_command_line_changes_read_values_as_literals_and_apply_by_path():
    changes = parse_changes(["refine.video_every=2", "dynamic.clip_span=(8, 32)",
                             "dynamic.mirror=reverse", "static.init='proxy'"])
    assert changes == {"refine.video_every": 2, "dynamic.clip_span": (8, 32),
                       "dynamic.mirror": "reverse", "static.init": "proxy"}
    tree = override(PAPER, changes)
    assert (tree.refine.video_every, tree.dynamic.clip_span) == (2, (8, 32))
    assert PAPER.refine.video_every == 1  # presets are values: the original is unchanged


@pytest.mark.parametrize("bad", ["refine.video_every", "=2", "video_every"])
def test_a_change_without_path_and_value_is_refused(bad):
    with pytest.raises(ConfigError, match="PATH=VALUE"):
        parse_changes([bad])


def test_a_path_that_names_no_field_says_which_fields_there_are():
    with pytest.raises(ConfigError, match="no field 'video_evry'.*video_every"):
        override(PAPER, parse_changes(["refine.video_evry=2"]))
    with pytest.raises(ValueError, match="dynamic.mirror"):
        override(PAPER, parse_changes(["dynamic.mirror=sideways"]))


def test_the_motion_fields_rate_and_finest_open_level_follow_the_dynamic_config():
    from types import SimpleNamespace

    from animate4d.backend.pipeline.config import tiny
    from animate4d.backend.pipeline.optimisation import stage_optimiser
    from animate4d.backend.pipeline.run import Dynamic
    from animate4d.backend.pipeline.stages import Scene

    preset = override(tiny(PAPER, max_steps=10), {"dynamic.motion_lr_scale": 0.3,
                                                  "dynamic.motion_levels": 0.5})
    scene = Scene(preset, "cpu")
    groups = stage_optimiser(scene, "dynamic", preset).param_groups
    assert groups[0]["lr"] == pytest.approx(0.3 * preset.optim.lr)  # the motion field's
    stage = Dynamic(SimpleNamespace(config=preset))
    features = scene.motion.encoder.features
    levels = scene.motion.encoder.levels
    for step, open_levels in ((0, 1), (stage.steps, levels // 2)):
        stage.before_step(scene, step)
        window = scene.motion.level_window.view(levels, features)[:, 0]
        assert int((window > 0).sum()) == open_levels, (step, window)
    with pytest.raises(ValueError, match="motion_levels"):
        override(PAPER, {"dynamic.motion_levels": 0.0})
