"""`--device` mistakes are the user's, said plainly (not torch's assertion as a bug); a memory
limit is a GPU budget."""

import argparse
import os

import pytest
import torch

from animate4d.backend.runtime.devices import choose_device, limit_memory
from animate4d.protocol.errors import Animate4DError


def test_auto_and_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device(None).type == want == choose_device("auto").type
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, said", [("banana", "not a device name"),
                                        ("mps", "cuda or cpu only")])
def test_names_that_are_not_ours(name, said):
    with pytest.raises(Animate4DError, match=said):
        choose_device(name)


def test_cuda_must_exist():
    if torch.cuda.is_available():
        with pytest.raises(Animate4DError, match="CUDA device"):
            choose_device(f"cuda:{torch.cuda.device_count()}")
        assert choose_device("cuda:0").type == "cuda"
    else:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(Animate4DError, match="has no CUDA device") as e:
                choose_device(name)
            assert "--device cpu" in e.value.hint


def test_memory_limit_is_a_gpu_budget_within_the_gpu():
    """A smaller card's budget on this GPU: refused off the GPU, and above what it has."""
    with pytest.raises(Animate4DError, match="needs a CUDA device"):
        limit_memory("cpu", 24)
    if not torch.cuda.is_available():
        pytest.skip("the rest needs CUDA")
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    with pytest.raises(Animate4DError, match="more than this GPU has"):
        limit_memory("cuda:0", int(total) + 1)
    for name in ("cuda:0", "cuda"):  # "cuda" as `--device cuda` passes it, no index
        try:
            limit_memory(name, 1)
            with pytest.raises(torch.cuda.OutOfMemoryError):
                torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda:0")
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_the_allocator_grows_segments_unless_the_user_configured_it():
    from animate4d.backend.runtime.devices import ALLOCATOR, prefer_expandable_segments

    env: dict = {}
    prefer_expandable_segments(env)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": ALLOCATOR}
    mine = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    prefer_expandable_segments(mine)
    assert mine == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}


def test_every_command_runs_with_the_allocator_asked_for(monkeypatch):
    """`animate4d` sets it before the command runs (the variable is read at CUDA's first
    allocation), so a worker's refine stage gets it without the user knowing of it."""
    from animate4d.backend import cli

    # set, then removed: the test's end puts the variable back as it was (absent or not)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    seen = {}

    def command(args):
        seen["conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        return 0

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    assert cli.main([], parser) == 0
    assert seen["conf"] == "expandable_segments:True"


def test_compiled_kernels_are_kept_in_the_cache_folder_unless_placed_elsewhere(monkeypatch,
                                                                                tmp_path):
    """A worker on a fresh machine or container keeps its compiled kernels where its learned
    tokens are (ANIMATE4D_CACHE), so a restart does not compile every stage again; and torch
    reads the variables where it writes them."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

    from animate4d.backend import cli

    monkeypatch.setenv("ANIMATE4D_CACHE", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    seen = {}

    def command(args):
        seen["inductor"], seen["triton"] = cache_dir(), triton_cache_dir(0)
        return 0

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    assert cli.main([], parser) == 0
    kept = tmp_path / "cache" / "compiled"
    assert seen == {"inductor": str(kept / "inductor"), "triton": str(kept / "triton")}

    mine = {"ANIMATE4D_CACHE": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": "/fast/inductor"}
    from animate4d.backend.runtime.devices import keep_compiled_kernels

    keep_compiled_kernels(mine)
    assert mine["TORCHINDUCTOR_CACHE_DIR"] == "/fast/inductor"
    assert mine["TRITON_CACHE_DIR"] == str(tmp_path / "compiled" / "triton")
