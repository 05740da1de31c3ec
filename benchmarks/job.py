"""`python -m benchmarks job`: one whole Animate124 job, as a worker runs it.

The bundled example and a prompt through `jobs.presets.method_for` and the stage runner
(`jobs.method.run_method`): preprocess, textual inversion, static, dynamic, refine, export,
one after another on one scene, on random weights at the real sizes (or `--models DIR`).
Reports the priors' construction, each stage's wall time and peak memory, and the total.
`--max-steps` caps every stage (a scaled job: the whole path, each stage's peak, in minutes);
`--memory-limit-gib` holds the allocator to a smaller card's budget.
"""

from __future__ import annotations

import argparse
import sys
import time


def run(args) -> dict:
    import os

    # What `animate4d` sets for a job unless told otherwise: a capped card fits with it.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from importlib import resources

    import torch

    from animate4d.backend.jobs.method import run_method
    from animate4d.backend.jobs.presets import config_for, method_for
    from animate4d.backend.pipeline.config import TINY_SIZES, override, scaled
    from animate4d.backend.runtime.devices import limit_memory
    from animate4d.protocol.options import JobOptions

    from . import device_name, pick_device

    device = pick_device(args.device)
    if args.memory_limit_gib:
        limit_memory(device, args.memory_limit_gib)
    cuda = device.type == "cuda"
    config = config_for(args.preset, args.models)
    if args.tiny_sizes:
        config = override(config, TINY_SIZES)
    config = scaled(config, args.max_steps)
    image = resources.files("animate4d.backend").joinpath("examples", "panda.png").read_bytes()
    options = JobOptions(prompt="a panda is dancing", preset=args.preset, frames=args.frames)
    t_start = time.perf_counter()
    job = method_for(image, options, models=args.models, config=config, device=device,
                     random_weights=args.models is None)
    job.token_cache = False  # the token is learned, and timed, every time
    out = {"benchmark": "job", "preset": args.preset, "device": device_name(device),
           "max_steps": args.max_steps, "memory_limit_gib": args.memory_limit_gib,
           "frames": args.frames, "construct_seconds": time.perf_counter() - t_start,
           "stages": {}}
    at = {"stage": None, "t0": time.perf_counter()}

    def close(now: float) -> None:
        name = at["stage"]
        if name is None:
            return
        fig = out["stages"].setdefault(name, {"seconds": 0.0, "steps": 0})
        fig["seconds"] = round(fig["seconds"] + now - at["t0"], 2)
        if cuda:
            torch.cuda.synchronize(device)
            fig["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
            fig["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2)
            torch.cuda.reset_peak_memory_stats(device)
        print(f"{name}: {fig}", file=sys.stderr, flush=True)

    def progress(stage: str, step: int, total: int) -> None:
        if stage != at["stage"]:
            if cuda:
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            close(now)
            at.update(stage=stage, t0=now)
        out["stages"].setdefault(stage, {"seconds": 0.0, "steps": 0})["steps"] = total

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = run_method(job, progress)
    if cuda:
        torch.cuda.synchronize(device)
    close(time.perf_counter())
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out["total_minutes"] = round(out["total_seconds"] / 60, 2)
    out["vertices"], out["faces"] = result.num_vertices, len(result.faces)
    return out


def add_parser(sub) -> None:
    from . import int_in, report

    p = sub.add_parser("job", help="one whole Animate124 job (priors built, every stage, "
                       "export): wall time and peak memory per stage",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="fast", choices=("fast", "paper"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--frames", type=int_in(2, 64), default=16)
    p.add_argument("--max-steps", type=int_in(1, 100_000), default=None,
                   help="cap every stage at this many steps (a scaled job)")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help="hold the allocator to this many GiB (a smaller card's budget)")
    p.add_argument("--models", metavar="DIR",
                   help="models folder (default: random weights at the real sizes)")
    p.add_argument("--tiny-sizes", action="store_true",
                   help="the tiny models' renders and fields (with --models from "
                        "`animate4d models make-tiny`)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
