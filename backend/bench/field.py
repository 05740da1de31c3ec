"""Field benchmarks: the dynamic stage's render step and mesh extraction, eager and compiled.

    animate4d bench render  [--device cuda --frames 16 --size 128 --shading albedo|lambertian]
    animate4d bench extract [--device cuda --frames 24 --resolution 256 --faces 50000]

Fields are the DESIGN.md sizes (canonical 16 levels x 2 features, 2^19 table, 16..2048; motion
4D grid likewise), at their initial state (the density blob: a ball of radius ~0.5, which
the occupancy grid tightens to as a fitted object would be), with a motion field whose
weights are scaled up so that it moves points by a few percent of the box.
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import report


def _fields(device):
    import torch

    from ..field.fields import CanonicalField, MotionField

    torch.manual_seed(0)
    canonical = CanonicalField().to(device)
    motion = MotionField().to(device)
    with torch.no_grad():
        canonical.net[-1].bias[0] = -5.0  # density only inside the blob (radius ~0.4-0.7)
        motion.encoder.embeddings.uniform_(-0.05, 0.05)
    return canonical, motion


def _timed(fn, iters, warmup, device) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _device(name):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _gpu_name(device):
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_render(args) -> dict:
    import torch

    from ..field.render import CameraBatch, OccupancyGrid, Renderer, Shading
    from ..preprocess.framing import canonical_camera

    device = _device(args.device)
    canonical, motion = _fields(device)
    occupancy = OccupancyGrid(1.0, 64, device=device)
    results = {}
    for mode in ("eager", "compiled"):
        can, mot = _maybe_compiled(canonical, motion, mode)
        renderer = Renderer(can, mot, samples=args.samples, occupancy=occupancy)
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

        ms = _timed(step, args.iters, args.warmup, device)
        results[f"{mode}_ms"] = round(statistics.median(ms), 2)
    return {"benchmark": "render", "device": _gpu_name(device), "frames": args.frames,
            "size": args.size, "rays": args.frames * args.size**2, "samples": args.samples,
            "shading": args.shading, "occupied_fraction": round(frac, 4), **results,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else None, "torch": torch.__version__}


_BUCKET = 2**18


def _padded(fn, x, *rest):
    """fn on x (and per-point tensors in rest) padded to a multiple of _BUCKET points, so the
    compiled graph sees a handful of static shapes. torch 2.11 on CUDA fails an internal Dynamo
    assertion for an autograd.Function under dynamic=True with gradients; static shapes work."""
    import torch

    n = x.shape[0]
    pad = -n % _BUCKET

    def grow(v):
        if not torch.is_tensor(v) or v.ndim == 0 or v.shape[0] != n or pad == 0:
            return v
        return torch.cat([v, v[:1].expand(pad, *v.shape[1:])])

    out = fn(grow(x), *(grow(v) for v in rest))
    return tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n]


class _Canonical:
    """A (possibly compiled) canonical module seen through the field interface."""

    def __init__(self, module, original):
        self.module, self.original = module, original

    def __call__(self, x):
        return _padded(self.module, x)

    def density(self, x):
        return self(x)[0]

    def parameters(self):
        return self.original.parameters()


class _Warp:
    """The motion module's displacement through a (possibly compiled) forward."""

    def __init__(self, module):
        self.module = module

    def warp(self, x, t):
        return x + self.displacement(x, t)

    def displacement(self, x, t):
        import torch

        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), float(t), device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        return _padded(self.module, x, t)


def _maybe_compiled(canonical, motion, mode):
    import torch

    if mode == "eager":
        return canonical, motion
    torch._dynamo.config.cache_size_limit = 64  # one graph per bucket count
    return (_Canonical(torch.compile(canonical, dynamic=False), canonical),
            _Warp(torch.compile(motion, dynamic=False)))


def run_extract(args) -> dict:
    import torch

    from ..field.extract import extract

    device = _device(args.device)
    canonical, motion = _fields(device)
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
    return {"benchmark": "extract", "device": _gpu_name(device), "frames": args.frames,
            "resolution": args.resolution, "target_faces": args.faces,
            "faces": rep["faces"], "faces_marching_cubes": rep["faces_marching_cubes"],
            "warp_residual_max": rep["warp_residual_max"], **results,
            "torch": torch.__version__}


def _common(p):
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--json", metavar="OUT")


def add_parsers(sub) -> None:
    p = sub.add_parser("render", help="the dynamic stage's render step (forward + backward)",
                       description=__doc__)
    _common(p)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--shading", default="albedo", choices=("albedo", "lambertian"))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.set_defaults(func=lambda a: report(run_render(a), a.json))
    p = sub.add_parser("extract", help="mesh extraction: marching cubes, decimation, frames",
                       description=__doc__)
    _common(p)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--faces", type=int, default=50_000)
    p.add_argument("--iters", type=int, default=2)
    p.set_defaults(func=lambda a: report(run_extract(a), a.json))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m animate4d.backend.bench.field")
    add_parsers(parser.add_subparsers(dest="benchmark", required=True))
    args = parser.parse_args()
    raise SystemExit(args.func(args))
