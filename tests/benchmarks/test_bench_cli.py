"""`python -m benchmarks ...` as a developer runs it from a checkout: real subprocesses, exit
codes and reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def benchmarks(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_bench_attention_times_both_variants_and_rejects_a_bad_shape(tmp_path):
    out = tmp_path / "attention.json"
    r = benchmarks("attention", "--device", "cpu", "--shape", "2x96", "--head", "16",
                   "--chunk", "32", "--iters", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    shapes = json.loads(out.read_text())["shapes"]
    assert set(shapes["2x96"]) == {"sdpa", "chunked"}
    assert all(v["ms"] > 0 for v in shapes["2x96"].values())
    r = benchmarks("attention", "--shape", "16by1024")
    assert r.returncode == 2 and "BATCHxTOKENS" in r.stderr


def test_bench_stages_runs_tiny_models_on_the_cpu_and_rejects_bad_counts(tmp_path, tiny_models):
    """The stages bench end to end on the tiny models (static stage, one timed step of each
    kind, with the idle-gap profile): a report with both kinds, a projection and a profile
    per kind; bad stage names and counts are usage errors, not tracebacks."""
    out = tmp_path / "stages.json"
    r = benchmarks("stages", "--tiny", "--models", tiny_models, "--device", "cpu",
                   "--state", "initial", "--stages", "static", "--iters", 1, "--warmup", 0,
                   "--profile-gaps", "--phases", "--json", out)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    static = report["stages"]["static"]
    assert report["complete"] and set(static["kinds"]) == {"reference", "sds"}
    assert static["ms_per_step"] > 0 and report["projected_minutes_total"] > 0
    assert 0 <= static["elsewhere_share"] <= 1
    # The occupancy refreshes and checkpoints between steps, timed (`benchmarks.stages.projection`
    # counts them).
    periodic = static["periodic"]
    assert periodic["occupancy_refresh_ms"] > 0 and periodic["checkpoint_ms"] > 0
    assert periodic["ms_per_step"] > 0
    for kind in ("sds", "reference"):
        profile = report["profiles"]["static"][kind]
        assert profile["top"] and {"gaps_ms", "by_caller", "host_calls"} <= set(profile["gaps"])
    # the static step's parts, each timed (one render, SD and Zero123, their encodes)
    sds = report["phases"]["static"]["sds"]
    assert {"render", "sd", "zero123", "vae_encode", "backward", "optimiser_step"} <= set(sds)
    assert sds["vae_encode"]["calls_per_step"] == 2 and sds["render"]["calls_per_step"] == 1
    assert all(0 < v["host_ms"] <= v["total_ms"] for v in sds.values())
    assert "sd" not in report["phases"]["static"]["reference"]
    for bad, said in ((["--stages", "statik"], "invalid choice: 'statik'"),
                      (["--iters", "0"], "a whole number from 1 to 100"),
                      (["--warmup", "many"], "a whole number from 0 to 50")):
        r = benchmarks("stages", *bad)
        assert r.returncode == 2 and said in r.stderr, r.stderr


def test_bench_on_cuda_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for bench in (["clip-steps"], ["render"], ["hashgrid"], ["synthetic", "ball"]):
        r = benchmarks(*bench, "--device", "cuda")
        assert r.returncode == 2, (bench, r.stderr)
        assert "--device cuda: this machine has no CUDA device" in r.stderr
        assert "internal error" not in r.stderr
    # a 24 GB card's budget is a GPU's: on the CPU it is refused before any model loads
    r = benchmarks("stages", "--random-weights", "--device", "cpu",
                   "--memory-limit-gib", "24")
    assert r.returncode == 2 and "a memory limit needs a CUDA device" in r.stderr, r.stderr


def test_bench_counts_and_sizes_out_of_range_are_usage_errors():
    """Every count and size a bench takes has a limit, said in the message."""
    for args, said in ((["render", "--size", "99999"], "--size: '99999': a whole number from 8"),
                       (["extract", "--faces", "5"], "--faces: '5': a whole number from 100"),
                       (["load", "--workers", "0"], "--workers: '0': a whole number from 1"),
                       (["hashgrid", "--points", "x"], "--points: 'x': a whole number from 1"),
                       (["view-steps", "--iters", "0"], "--iters: '0': a whole number from 1"),
                       (["clip-steps", "--warmup", "101"],
                        "--warmup: '101': a whole number from 0 to 100")):
        r = benchmarks(*args)
        assert r.returncode == 2 and said in r.stderr, (args, r.stderr)


@pytest.mark.blender
def test_blender_import_times_the_extensions_import_in_real_blender(tmp_path):
    pytest.importorskip("bpy")
    out = tmp_path / "import.json"
    r = benchmarks("blender-import", "--frames", 3, "--vertices", 200, "--repeat", 2,
                   "--json", out)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["vertices"] == 200 and report["repeat"] == 2
    assert 0 < report["seconds_median"] <= report["seconds_max"] and report["blender"]
    r = benchmarks("blender-import", "--repeat", "0")
    assert r.returncode == 2 and "--repeat: '0': a whole number from 1" in r.stderr, r.stderr


@pytest.mark.parametrize("script", ["faults.py", "mesh_preview.py", "motion_edits.py"])
def test_the_benchmark_scripts_start_from_a_checkout(script):
    """The scripts outside `python -m benchmarks` import what they use (their --help runs
    every import at the top of the file)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "usage" in r.stdout, r.stderr
