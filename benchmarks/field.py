"""Field benchmarks: the dynamic stage's render step and mesh extraction, eager and compiled.

    python -m benchmarks render  [--device cuda --frames 16 --size 128 --shading albedo|lambertian]
    python -m benchmarks extract [--device cuda --frames 24 --resolution 256 --faces 50000]

Fields are the pipeline's sizes (canonical 16 levels x 2 features, 2^19 table, 16..2048; the
SDS stages' motion field, `stages.Scene`'s), with motion weights drawn so that it moves points
by a few percent of the box (the pipeline's starts still). The canonical density is in one
of two states (`--state`):
  blob    the initial density blob, tightened (a soft ball of radius ~0.5, no sharp surface):
          what the static stage starts from;
  fitted  regressed onto a solid ball of radius 0.5 with a sharp surface (the size a reference
          object takes in the view): what the dynamic and refine stages start from.
"""

from __future__ import annotations

import statistics
import time

from animate4d.protocol.limits import MAX_FACES

from . import device_name, int_in, pick_device, report, timed_ms


def _fields(device, state: str = "blob"):
    import torch

    from animate4d.backend.field.fields import CanonicalField
    from animate4d.backend.pipeline.config import PAPER
    from animate4d.backend.pipeline.stages import Scene

    torch.manual_seed(0)
    canonical = CanonicalField().to(device)
    motion = Scene(PAPER, device).motion
    with torch.no_grad():
        canonical.net[-1].bias[0] = -5.0  # density only inside the blob (radius ~0.4-0.7)
        motion.net[-1].weight.normal_(0, 0.05)
    if state == "fitted":
        fit_solid_ball(canonical)
    return canonical, motion


def fit_solid_ball(canonical, radius: float = 0.5, steps: int = 300,
                   points: int = 2**16) -> float:
    """The canonical field regressed onto a solid ball with a 0.01-wide edge (`fit.fit_shape`):
    a stand-in for a fitted object with a sharp surface."""
    import torch

    from animate4d.backend.field.fit import fit_shape

    gen = torch.Generator().manual_seed(1)
    shell = torch.nn.functional.normalize(torch.randn(4096, 3, generator=gen), dim=-1) * radius
    return fit_shape(canonical, lambda x: torch.sigmoid((radius - x.norm(dim=-1)) / 0.01),
                     near=shell, steps=steps, points=points)


def run_render(args) -> dict:
    import torch

    from animate4d.backend.field.render import CameraBatch, OccupancyGrid, Renderer, Shading
    from animate4d.backend.preprocess.framing import canonical_camera

    device = pick_device(args.device)
    canonical, motion = _fields(device, args.state)
    occupancy = OccupancyGrid(1.0, 64, device=device)
    results = {}
    for mode in ("eager",) if args.eager_only else ("eager", "compiled"):
        can, mot = _maybe_compiled(canonical, motion, mode)
        renderer = Renderer(can, mot, samples=args.samples, occupancy=occupancy,
                            prune=not args.no_prune)
        times = [k / args.frames for k in range(args.frames)]
        frac = occupancy.update(renderer.density_at, times=times,  # 1% opacity per step
                                threshold=0.01 / renderer.step_length)
        batch = CameraBatch([canonical_camera(args.size)] * args.frames, device)
        n = args.size * args.size
        u, v = torch.meshgrid(torch.arange(args.size, device=device) + 0.5,
                              torch.arange(args.size, device=device) + 0.5, indexing="xy")
        uv = torch.stack([u, v], -1).reshape(-1, 2).repeat(args.frames, 1)
        index = torch.arange(args.frames, device=device).repeat_interleave(n)
        o, d = batch.rays(index, uv)
        t = torch.tensor(times, device=device).repeat_interleave(n)
        shading = Shading(mode=args.shading)

        def step(renderer=renderer, o=o, d=d, t=t, shading=shading):
            out = renderer.render_rays(o, d, t, shading=shading, jitter=True)
            out["rgb"].mean().backward()
            canonical.zero_grad(set_to_none=True)
            motion.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = timed_ms(step, args.iters, args.warmup, device)
        results[f"{mode}_ms"] = round(statistics.median(ms), 2)
        if device.type == "cuda":
            results[f"{mode}_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    if args.profile or args.profile_gaps:
        results["profile"] = profile_steps(step, device, gaps=args.profile_gaps)
    rays = args.frames * args.size**2
    counts = {k: round(float(v) / rays, 2) for k, v in renderer.last_samples.items()}
    return {"benchmark": "render", "device": device_name(device), "frames": args.frames,
            "size": args.size, "rays": rays, "samples": args.samples, "state": args.state,
            "shading": args.shading, "occupied_fraction": round(frac, 4),
            "samples_per_ray": counts, "prune": not args.no_prune, **results,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else None, "torch": torch.__version__}


def profile_steps(step, device, rows: int = 25, gaps: bool = False) -> dict:
    """The kernels and ops that took the most device time over three steps, as rows of name,
    total ms per step and calls per step; with the step's wall time and the device's busy
    time beside it (busy well under wall: the GPU waits on Python launching kernels).
    `gaps`: also record Python stacks and charge the GPU's idle gaps to the code that
    launched the next kernel (`benchmarks.gaps`); the stacks slow the host, so the wall time of
    such a profile overstates the step's."""
    import json
    import os
    import tempfile
    import time

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from .gaps import idle_gaps

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, with_stack=gaps) as prof:
        start = time.perf_counter()
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    out = {"wall_ms_per_step": round(wall / 3 * 1e3, 2),
           # kernels only: an op's row repeats the time of the kernels it launched
           "busy_ms_per_step": round(sum(getattr(e, key) for e in events if not cuda
                                         or e.device_type == DeviceType.CUDA) / 3e3, 2),
           "top": [{"name": e.key[:80], "ms_per_step": round(getattr(e, key) / 3e3, 3),
                    "calls_per_step": e.count // 3} for e in events[:rows]]}
    if gaps:
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        try:
            prof.export_chrome_trace(path)
            with open(path) as f:
                trace = json.load(f)
        finally:
            os.unlink(path)
        out["gaps"] = idle_gaps(trace["traceEvents"] if isinstance(trace, dict) else trace,
                                steps=3)
    return out


def _maybe_compiled(canonical, motion, mode):
    from .compiled_fields import compiled_fields

    return (canonical, motion) if mode == "eager" else compiled_fields(canonical, motion)


def run_extract(args) -> dict:
    import torch

    from animate4d.backend.field.extract import extract

    device = pick_device(args.device)
    canonical, motion = _fields(device, args.state)
    results = {}
    for mode in ("eager", "compiled"):
        can, mot = _maybe_compiled(canonical, motion, mode)
        runs = []
        for _ in range(args.iters + 1):  # the first run warms up (and compiles)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mesh, rep = extract(can, mot, frames=args.frames, resolution=args.resolution,
                                threshold=10.0, target_faces=args.faces, device=device)
            runs.append(time.perf_counter() - t0)
        results[f"{mode}_s"] = round(statistics.median(runs[1:]), 3)
    return {"benchmark": "extract", "device": device_name(device), "frames": args.frames,
            "resolution": args.resolution, "target_faces": args.faces,
            "faces": rep["faces"], "faces_marching_cubes": rep["faces_marching_cubes"],
            "warp_residual_max": rep["warp_residual_max"], **results,
            "torch": torch.__version__}


def _common(p):
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--state", default="blob", choices=("blob", "fitted"),
                   help="the canonical density: the initial blob or a fitted solid ball")
    p.add_argument("--json", metavar="OUT")


def add_parsers(sub) -> None:
    p = sub.add_parser("render", help="the dynamic stage's render step (forward + backward)",
                       description=__doc__)
    _common(p)
    p.add_argument("--frames", type=int_in(1, 64), default=16)
    p.add_argument("--size", type=int_in(8, 1024), default=128)
    p.add_argument("--samples", type=int_in(1, 1024), default=64)
    p.add_argument("--shading", default="albedo", choices=("albedo", "lambertian"))
    p.add_argument("--profile", action="store_true",
                   help="also list the ops that take the most time (torch.profiler)")
    p.add_argument("--profile-gaps", action="store_true",
                   help="--profile, and charge the GPU's idle gaps to the code that launched "
                   "the next kernel")
    p.add_argument("--eager-only", action="store_true", help="skip the compiled variant")
    p.add_argument("--no-prune", action="store_true",
                   help="shade every occupied sample (no first pass): the older renderer")
    p.add_argument("--iters", type=int_in(1, 1000), default=20)
    p.add_argument("--warmup", type=int_in(0, 100), default=5)
    p.set_defaults(func=lambda a: report(run_render(a), a.json))
    p = sub.add_parser("extract", help="mesh extraction: marching cubes, decimation, frames",
                       description=__doc__)
    _common(p)
    p.add_argument("--frames", type=int_in(1, 240), default=24)
    p.add_argument("--resolution", type=int_in(16, 1024), default=256)
    p.add_argument("--faces", type=int_in(100, MAX_FACES), default=50_000)
    p.add_argument("--iters", type=int_in(1, 100), default=2)
    p.set_defaults(func=lambda a: report(run_extract(a), a.json))

