"""The idle-gap analysis of `--profile-gaps`: gaps charged to the project code that
launched the next kernel, on a hand-made trace; and the profiler path end to end on the CPU."""

import torch

from benchmarks.field import profile_steps
from benchmarks.gaps import idle_gaps


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid,
            "args": args}


def test_gaps_are_charged_to_the_project_frames_that_launched_the_next_kernel():
    render = "/pkg/animate4d/backend/field/render.py(10): render_rays"
    visible = "/pkg/animate4d/backend/field/render.py(20): _visible"
    events = [
        # host: Python frames on thread 1 (one already closed at the launch), a launch at 50
        _x("python_function", "/usr/lib/site-packages/torch/nn/module.py(1): __call__", 0, 400),
        _x("python_function", "/pkg/animate4d/backend/pipeline/stages.py(5): done", 0, 30),
        _x("python_function", render, 20, 100),
        _x("python_function", visible, 40, 30),
        _x("cuda_runtime", "cudaLaunchKernel", 1, 2, correlation=1),
        _x("cuda_driver", "cuLaunchKernelEx", 50, 2, correlation=2),
        _x("cuda_runtime", "cudaLaunchKernel", 115, 2, correlation=3),
        _x("cuda_runtime", "cudaLaunchKernel", 300, 2, tid=7, correlation=4),
        _x("cuda_runtime", "cudaStreamSynchronize", 130, 5),
        _x("cuda_runtime", "cudaStreamSynchronize", 200, 5),
        _x("cuda_runtime", "cudaMemcpyAsync", 210, 5),
        # device: K1, a 100 us gap, K2, a 2 us gap (the launch pipeline: not counted), K3,
        # a 170 us gap, K4 (launched from a thread with no project frame)
        _x("kernel", "k1", 10, 10, tid=0, correlation=1),
        _x("kernel", "k2", 120, 10, tid=0, correlation=2),
        _x("kernel", "k3", 132, 8, tid=0, correlation=3),
        _x("gpu_memcpy", "k4", 310, 10, tid=0, correlation=4),
    ]
    got = idle_gaps(events, steps=2)
    assert got["busy_ms"] == round(38 / 2e3, 2)
    assert got["span_ms"] == round(310 / 2e3, 2)
    assert got["gaps_ms"] == round(270 / 2e3, 2)
    assert got["by_caller"][0] == {"call": "(outside the package)", "ms_per_step": 0.085}
    assert got["by_caller"][1] == {"call": "render.py(10): render_rays > render.py(20): _visible",
                                   "ms_per_step": 0.05}
    assert [r["call"] for r in got["by_frame"]] == ["(outside the package)",
                                                    "render.py(20): _visible"]
    assert got["host_calls"] == {"cudaStreamSynchronize": 1.0, "cudaMemcpyAsync": 0.5}


def test_backward_kernels_are_charged_to_their_autograd_node_and_busy_time_to_callers():
    step = "/pkg/animate4d/backend/pipeline/stages.py(92): static_step"
    node = "autograd::engine::evaluate_function: "
    events = [
        _x("python_function", step, 0, 100),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 2, correlation=1),
        _x("cuda_runtime", "cudaLaunchKernel", 20, 2, correlation=2),
        # the autograd thread (7): two nodes, one kernel each; thread 8 has no node
        _x("cpu_op", node + "MulBackward0", 200, 20, tid=7),
        _x("cpu_op", node + "CompiledFunctionBackward", 230, 50, tid=7),
        _x("cuda_runtime", "cudaLaunchKernel", 210, 2, tid=7, correlation=3),
        _x("cuda_runtime", "cudaLaunchKernel", 250, 2, tid=7, correlation=4),
        _x("cuda_runtime", "cudaLaunchKernel", 400, 2, tid=8, correlation=5),
        _x("kernel", "a", 12, 30, tid=0, correlation=1),
        _x("kernel", "b", 42, 40, tid=0, correlation=2),
        _x("kernel", "c", 215, 5, tid=0, correlation=3),
        _x("kernel", "d", 260, 100, tid=0, correlation=4),
        _x("kernel", "e", 410, 10, tid=0, correlation=5),
    ]
    got = idle_gaps(events, steps=1)
    busy = {r["call"]: r["ms_per_step"] for r in got["busy_by_caller"]}
    assert busy == {"stages.py(92): static_step": 0.07, "(backward) CompiledFunctionBackward":
                    0.1, "(backward) MulBackward0": 0.005, "(outside the package)": 0.01}
    gaps = {r["call"]: r["ms_per_step"] for r in got["by_caller"]}
    # a gap of 133 us before c (MulBackward0), 40 before d, 50 before e; none before a or b
    assert gaps == {"(backward) MulBackward0": 0.133, "(backward) CompiledFunctionBackward":
                    0.04, "(outside the package)": 0.05}
    assert got["busy_ms"] == round(0.185, 2) and got["gaps_ms"] == round(0.223, 2)


def test_no_device_kernels_means_no_gaps():
    got = idle_gaps([_x("cuda_runtime", "cudaDeviceSynchronize", 0, 1)], steps=1)
    assert got["gaps_ms"] == 0.0 and got["by_caller"] == []
    assert got["host_calls"] == {"cudaDeviceSynchronize": 1.0}


def test_profile_steps_with_gaps_runs_on_the_cpu():
    """The trace export and analysis path (a CPU trace has no kernels, so no gaps)."""
    x = torch.randn(64, 64, requires_grad=True)

    def step():
        (x @ x).sum().backward()

    out = profile_steps(step, torch.device("cpu"), rows=5, gaps=True)
    assert out["top"] and out["wall_ms_per_step"] > 0
    assert out["gaps"]["gaps_ms"] == 0.0 and out["gaps"]["by_caller"] == []
