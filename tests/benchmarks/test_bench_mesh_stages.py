"""`python -m benchmarks mesh-stages`: mesh mode's stages timed on the tiny models, in process."""

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.mesh_stages import run


def test_mesh_stages_times_each_stage_and_projects_the_preset(tiny_models):
    args = build_parser().parse_args(["mesh-stages", "--device", "cpu", "--models",
                                      str(tiny_models), "--tiny-sizes", "--steps", "2",
                                      "--warmup", "1", "--frames", "4"])
    out = run(args)
    assert out["scene"] == "bend" and out["vertices"] > 1000 and out["frames"] == 4
    assert out["fit_seconds"] > 0 and out["export_seconds"] > 0
    assert out["dynamic_ms_per_step"] > 0 and out["dynamic_steps"] == 2500  # fast's schedule
    want = (out["fit_seconds"] + out["export_seconds"]
            + out["dynamic_ms_per_step"] / 1000 * out["dynamic_steps"]) / 60
    assert out["projected_minutes"] == pytest.approx(want)
