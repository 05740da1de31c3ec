"""Developer benchmarks, run from a checkout (`python -m benchmarks NAME`, see README.md): the
measurements that belong in docs/BENCHMARKS.md, never in tests. Not installed with the wheel.
This module holds what they share: reporting, argument types, devices and timing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from animate4d.backend.commands.args import whole_number as int_in  # noqa: F401 (re-export)
from animate4d.backend.runtime.devices import choose_device


def report(result: dict, json_path: str | None) -> int:
    """Print the figures as JSON (and write them to `json_path` when given)."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0


def pick_device(name: str):
    """`--device` auto|cuda|cpu as a torch.device, with tensor cores set as the pipeline
    sets them."""
    from animate4d.backend.field import use_tensor_cores

    device = choose_device(name)
    use_tensor_cores(device)
    return device


def device_name(device) -> str:
    """The GPU's name for the report ("cpu" on the CPU)."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def alternated(variants: list[str], kinds: tuple[str, ...], step, iters: int,
               warmup: int) -> dict:
    """Milliseconds of `step(kind, variant)` per variant and kind, all variants in each round
    in an order rotated round by round (none always right after another), the first `warmup`
    rounds not counted. Why: a machine differs from itself a minute later by more than the
    few ms an A/B is about; alternated in one process, the variants share its moods."""
    times = {v: {k: [] for k in kinds} for v in variants}
    for i in range(warmup + iters):
        for v in variants[i % len(variants):] + variants[: i % len(variants)]:
            for kind in kinds:
                ms = step(kind, v)
                if i >= warmup:
                    times[v][kind].append(ms)
    return times


def elapsed_ms(fn, device) -> float:
    """Milliseconds `fn()` takes, the GPU's queue drained before and after (on CUDA)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def timed_ms(fn, iters: int, warmup: int, device) -> list[float]:
    """`elapsed_ms` of `iters` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [elapsed_ms(fn, device) for _ in range(iters)]
