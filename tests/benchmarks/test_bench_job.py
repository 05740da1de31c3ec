"""`python -m benchmarks job`: one whole job through the stage runner, on the tiny models."""

from benchmarks.__main__ import build_parser
from benchmarks.job import run


def test_job_runs_every_stage_and_resumes_a_stopped_run_without_counting_time_twice(
        tiny_models, tmp_path, monkeypatch):
    import itertools
    import json
    import types

    import pytest

    from benchmarks import job as bench_job

    folder = tmp_path / "job"
    argv = ["job", "--device", "cpu", "--models", str(tiny_models), "--tiny-sizes",
            "--max-steps", "2", "--frames", "4", "--resume-dir", str(folder)]
    written = []
    real_write = bench_job._write_json

    def stop_in_dynamic(path, figures):
        real_write(path, figures)
        written.append(figures)
        if "dynamic" in figures["stages"]:  # killed right after dynamic's first checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(bench_job, "_write_json", stop_in_dynamic)
    monkeypatch.setattr(bench_job, "WARM_STEPS", 1)  # a steady step time from 2 steps
    # A clock one second later at every reading: every span the benchmark measures is a
    # whole, non-zero number of seconds, whatever the machine's speed.
    ticks = itertools.count(1000)
    monkeypatch.setattr(bench_job, "time", types.SimpleNamespace(
        perf_counter=lambda: float(next(ticks))))
    with pytest.raises(KeyboardInterrupt):
        run(build_parser().parse_args(argv))
    left = json.loads((folder / "figures.json").read_text())
    assert left == written[-1] and not left.get("complete")
    assert list(left["stages"]) == ["preprocess", "textual_inversion", "static", "dynamic"]

    monkeypatch.setattr(bench_job, "_write_json", real_write)
    out = run(build_parser().parse_args(argv))
    assert out["runs"] == 2 and out["complete"]
    assert list(out["stages"]) == ["preprocess", "textual_inversion", "static", "dynamic",
                                   "refine", "export"]
    # the stages done before the stop were not run again: their figures are the first run's
    for done in ("preprocess", "textual_inversion", "static"):
        assert out["stages"][done] == left["stages"][done]
    assert out["stages"]["dynamic"]["seconds"] > left["stages"]["dynamic"]["seconds"]
    assert out["construct_seconds"] == left["construct_seconds"]
    assert all(s["seconds"] > 0 for s in out["stages"].values())
    for name in ("static", "refine"):  # set-up, then a warm step, then the timed one
        fig = out["stages"][name]
        assert 1 <= fig["setup_seconds"] < fig["seconds"]
        assert 1 <= fig["step_ms"] / 1000 < fig["seconds"] - fig["setup_seconds"]
    # dynamic's set-up ran in both runs; resumed at its last step, it took no steady time
    assert out["stages"]["dynamic"]["setup_seconds"] > left["stages"]["dynamic"]["setup_seconds"]
    assert "step_ms" not in out["stages"]["dynamic"]
    assert all(out["stages"][s]["steps"] == 2 for s in ("static", "dynamic", "refine"))
    assert out["total_seconds"] == out["construct_seconds"] + sum(
        s["seconds"] for s in out["stages"].values())
    assert out["vertices"] > 0 and out["faces"] > 0 and out["frames"] == 4
    assert json.loads((folder / "figures.json").read_text()) == out
    # a finished job is not run again, nor a folder resumed with other arguments
    with pytest.raises(SystemExit, match="complete"):
        run(build_parser().parse_args(argv))
    other = tmp_path / "other"
    other.mkdir()
    (other / "figures.json").write_text(json.dumps({**left, "preset": "paper"}))
    with pytest.raises(SystemExit, match="other preset"):
        run(build_parser().parse_args(argv[:-1] + [str(other)]))


def test_a_stage_that_runs_out_of_gpu_memory_is_a_figure_not_a_crash(tiny_models, tmp_path,
                                                                     monkeypatch):
    import json

    import torch

    from animate4d.backend.pipeline import run as a124

    def out_of_memory(self, step):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 MiB.")

    monkeypatch.setattr(a124.Refine, "step", out_of_memory)
    folder = tmp_path / "job"
    out = run(build_parser().parse_args(
        ["job", "--device", "cpu", "--models", str(tiny_models), "--tiny-sizes",
         "--max-steps", "2", "--frames", "4", "--resume-dir", str(folder)]))
    assert not out["complete"]
    assert list(out["stages"]) == ["preprocess", "textual_inversion", "static", "dynamic",
                                   "refine"]
    refine = out["stages"]["refine"]
    assert refine["error"] == "out of memory"
    assert "refine stage at step 0 of 2" in refine["detail"]
    assert json.loads((folder / "figures.json").read_text()) == out
