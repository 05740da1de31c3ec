"""`python -m benchmarks job`: one whole job through the stage runner, on the tiny models."""

from benchmarks.__main__ import build_parser
from benchmarks.job import run


def test_job_runs_every_stage_in_order_and_reports_each(tiny_models):
    args = build_parser().parse_args(["job", "--device", "cpu", "--models", str(tiny_models),
                                      "--tiny-sizes", "--max-steps", "2", "--frames", "4"])
    out = run(args)
    stages = out["stages"]
    assert list(stages) == ["preprocess", "textual_inversion", "static", "dynamic", "refine",
                            "export"]
    assert all(s["seconds"] > 0 for s in stages.values())
    # the cap reached every stage that steps
    assert all(stages[s]["steps"] == 2 for s in ("static", "dynamic", "refine"))
    assert out["total_seconds"] >= sum(s["seconds"] for s in stages.values()) - 0.5
    assert out["vertices"] > 0 and out["faces"] > 0 and out["frames"] == 4
