"""`--device` as a person types it, checked before any work starts; and a memory limit that
makes a big GPU behave as a smaller card (`limit_memory`).

Why: torch turns a device it cannot use into an assertion ("Torch not compiled with CUDA
enabled") or a list of thirty device types, deep inside the first tensor op; the commands
reported those as internal errors. Here they are the user's mistake, said plainly.
"""

from __future__ import annotations

import os

from animate4d.protocol.errors import Animate4DError, OutOfGpuMemoryError

from .switches import cache_folder

# PyTorch's CUDA allocator in segments that grow instead of fixed blocks: less of the memory
# is stranded between blocks, which decides whether a stage near the card's size fits (with
# fixed blocks refine's steps reserved past a 23 GiB cap where these fitted:
# docs/BENCHMARKS.md "Memory on a 24 GB card").
ALLOCATOR = "expandable_segments:True"


def prefer_expandable_segments(environ=os.environ) -> None:
    """Ask for `ALLOCATOR` unless the environment already configures the allocator. Read when
    CUDA first allocates, so this runs before any command touches the GPU."""
    environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOCATOR)


def keep_compiled_kernels(environ=os.environ) -> None:
    """Inductor's and Triton's kernel caches in the animate4d cache folder
    (`switches.cache_folder`: ANIMATE4D_CACHE, else ~/.cache/animate4d), unless the environment
    already places them. Their defaults (/tmp/torchinductor_$USER, ~/.triton) go with a
    container's or a fresh machine's disk, and a worker then compiles its priors again, stage
    by stage: on an H100, `fast`'s textual inversion had not finished after 185 s with a cold
    cache, and took 61 s with a warm one (docs/BENCHMARKS.md). Read when something first
    compiles."""
    base = cache_folder(environ) / "compiled"
    environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "inductor"))
    environ.setdefault("TRITON_CACHE_DIR", str(base / "triton"))


def choose_device(name: str | None):
    """`None` or "auto": CUDA when present, else the CPU; "cpu", "cuda" or "cuda:N" if this
    machine and this torch build have it; anything else is an `Animate4DError`."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise Animate4DError(f"--device {name}: not a device name",
                             hint="use cuda, cuda:N or cpu") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise Animate4DError(f"--device {name}: animate4d runs on cuda or cpu only")
    if not torch.cuda.is_available():
        raise Animate4DError(f"--device {name}: this machine has no CUDA device (or this "
                             f"torch build, {torch.__version__}, has no CUDA)",
                             hint="run it on a GPU host with a CUDA build of torch, or with "
                                  "--device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise Animate4DError(f"--device {name}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return device


def limit_memory(device, gib: float, flag: str = "--memory-limit-gib") -> None:
    """Let this process use at most `gib` GiB of `device`'s memory: a smaller card's budget
    on a bigger one (torch's allocator then runs out where that card would, cache given
    back and retried first), to check that a job fits a 24 GB card on an 80 GB one."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise Animate4DError(f"a memory limit needs a CUDA device, not {device}",
                             hint="drop --memory-limit-gib, or run on a GPU host")
    index = _cuda_index(device)
    total = torch.cuda.get_device_properties(index).total_memory
    if gib * 2**30 > total:
        raise Animate4DError(f"{flag} {gib}: more than this GPU has "
                             f"({total / 2**30:.1f} GiB)")
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, index)
    _LIMITS[index] = int(gib * 2**30)


def _cuda_index(device) -> int:
    """The index of a CUDA `device`; plain "cuda" (as the CLI passes it) is the device torch
    would use."""
    import torch

    return torch.cuda.current_device() if device.index is None else device.index


_LIMITS: dict[int, int] = {}
"""Per CUDA device index: the bytes `limit_memory` allowed this process."""


def usable_memory(device) -> int | None:
    """Bytes of `device`'s memory this process may use (the card's, or `limit_memory`'s
    cap); None off CUDA, where jobs do not size themselves to the device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = _cuda_index(device)
    total = torch.cuda.get_device_properties(index).total_memory
    return min(total, _LIMITS.get(index, total))


def job_gpu_memory() -> int:
    """Bytes of GPU memory a job of this process may use on the device it takes by itself
    (CUDA's current one): what a worker tells the server. 0 without CUDA."""
    try:
        import torch
    except ImportError:  # the backend without its GPU extras
        return 0
    if not torch.cuda.is_available():
        return 0
    return usable_memory(torch.device("cuda")) or 0


def out_of_memory(error: BaseException, where: str) -> OutOfGpuMemoryError | None:
    """`error` said for people if it is torch running out of GPU memory (`where`: "in the
    refine stage at step 3 of 5000"), None otherwise: the job's memory and what to do
    instead of a traceback."""
    import sys

    torch = sys.modules.get("torch")  # a job that never imported torch has no GPU to fill
    if torch is None or not isinstance(error, torch.cuda.OutOfMemoryError):
        return None
    card = ""
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        usable = usable_memory(torch.device("cuda", index))
        card = f"{torch.cuda.get_device_name(index)}, {usable / 2**30:.1f} GiB for this job; "
    detail = str(error).splitlines()[0][:300] if str(error) else "no detail"
    return OutOfGpuMemoryError(
        f"the GPU ran out of memory {where} ({card}{detail}); the job's checkpoints are kept",
        hint="run it on a GPU with more memory (the paper preset's refine stage peaks near "
             "24 GB), with fewer frames, or with nothing else on the card")
