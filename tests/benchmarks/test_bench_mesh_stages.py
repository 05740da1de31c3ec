"""`python -m benchmarks mesh-stages`: mesh mode's stages timed on the tiny models, in process."""

import itertools
import types

import pytest

from benchmarks import mesh_stages
from benchmarks.__main__ import build_parser


def test_mesh_stages_times_each_stage_and_projects_the_preset(tiny_models, monkeypatch):
    # A clock one second later at every reading: each span the benchmark takes is 1 s.
    ticks = itertools.count(1000)
    monkeypatch.setattr(mesh_stages, "time", types.SimpleNamespace(
        perf_counter=lambda: float(next(ticks))))
    args = build_parser().parse_args(["mesh-stages", "--device", "cpu", "--models",
                                      str(tiny_models), "--tiny-sizes", "--steps", "2",
                                      "--warmup", "1", "--frames", "4"])
    out = mesh_stages.run(args)
    assert out["scene"] == "bend" and out["vertices"] > 1000 and out["frames"] == 4
    assert out["fit_seconds"] == 1 and out["export_seconds"] == 1
    assert out["dynamic_ms_per_step"] == 500  # 1 s over the 2 timed steps, not the warm-up
    assert out["dynamic_steps"] == 2500  # fast's schedule, not the tiny sizes' cap
    # The fit and the export once, and fast's 2,500 dynamic steps at the timed rate.
    assert out["projected_minutes"] == pytest.approx((1 + 1 + 0.5 * 2500) / 60)
