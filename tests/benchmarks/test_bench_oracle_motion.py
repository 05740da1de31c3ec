"""`python -m benchmarks oracle-motion`: the learned motion against the truth's, in process."""

import math

from benchmarks.__main__ import build_parser
from benchmarks.oracle_motion import run

SHORT = ["--set", "static.steps=2", "--set", "dynamic.steps=2", "--set", "reference.first=1",
         "--set", "static.proxy_steps=5", "--set", "static.proxy_points=4096"]


def _run(*args):
    return run(build_parser().parse_args(["oracle-motion", *args, "--device", "cpu", *SHORT]))


def test_the_probe_measures_the_truths_motion_and_none_before_the_dynamic_stage():
    out = _run("lift")
    static, dynamic = out["after_static"], out["after_dynamic"]
    assert [r["time"] for r in static] == [0.125, 0.25, 0.375, 0.625]
    # lift moves further the later it is; before the dynamic stage the motion field is its
    # initial one (tiny hash-grid features: displacements far below a pixel)
    true = [r["true_length"] for r in static]
    assert true == sorted(true) and true[0] > 0
    assert all(r["learned_length"] < 1e-3 and
               abs(r["image_mse"] - r["image_mse_rest_pose"]) < 1e-4 for r in static)
    assert all(math.isfinite(r["cosine_where_moving"]) for r in dynamic)
    assert any(r["learned_length"] > 0 for r in dynamic)  # two dynamic steps moved it
