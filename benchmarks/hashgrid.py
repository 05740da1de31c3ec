"""Hash-grid forward + backward time: PyTorch eager, torch.compile'd, and the Triton kernels
(on CUDA), beside a memory-traffic floor.

    python -m benchmarks hashgrid --device cuda [--dims 4 --points 262144 --json OUT]

The floor counts the bytes a perfect kernel must move: for each point, level and corner, one
F-float read in the forward pass and one F-float atomic add in the backward pass, plus the
points in and the features out; divided by the GPU's memory bandwidth. Hits in L2 can beat it
for the coarse levels, so it is a guide, not a bound.
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import int_in, pick_device, report

BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s (SXM)


def _time(fn, iters: int, device: str) -> list[float]:
    import torch

    out = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run(args) -> dict:
    import torch  # here, not at import: `python -m benchmarks load` has no need of it

    from animate4d.backend.field.hashgrid import HashGrid

    device = pick_device(args.device).type
    from animate4d.backend.field import hashgrid_triton

    grid = HashGrid(dims=args.dims, backend="torch").to(device)
    x = torch.rand(args.points, args.dims, device=device).requires_grad_(args.input_grad)
    results = {}
    compiled = torch.compile(grid) if args.mode == "default" else torch.compile(grid,
                                                                                mode=args.mode)
    variants = [("eager", grid), ("compiled", compiled)]
    if hashgrid_triton.available(x.device):
        kernels = HashGrid(dims=args.dims, backend="triton").to(device)
        kernels.embeddings = grid.embeddings  # the same table
        variants.append(("triton", kernels))
    for name, module in variants:
        def step(module=module):
            grid.embeddings.grad = x.grad = None
            module(x).float().square().mean().backward()
        for _ in range(args.warmup):
            step()
        ms = _time(step, args.iters, device)
        results[name] = {"ms_median": round(statistics.median(ms), 3),
                         "ms_min": round(min(ms), 3)}
    corners = 2**args.dims
    bytes_moved = args.points * (args.dims * 4 + grid.output_dim * 4 * 2) + \
        2 * args.points * grid.levels * corners * grid.features * 4
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    bw = next((v for k, v in BANDWIDTH.items() if k in name), None)
    return {
        "benchmark": "hashgrid", "device": name, "dims": args.dims, "points": args.points,
        "compile_mode": args.mode, "input_grad": args.input_grad,
        "levels": grid.levels, "features": grid.features, "table": int(grid.sizes.max()),
        **{f"{k}_ms": v["ms_median"] for k, v in results.items()},
        **{f"{k}_ms_min": v["ms_min"] for k, v in results.items()},
        "floor_bytes": bytes_moved,
        "floor_ms": round(bytes_moved / bw * 1e3, 3) if bw else None,
        "torch": torch.__version__,
    }


def main(args) -> int:
    result = run(args)
    return report(result, args.json)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="default: cuda when available")
    p.add_argument("--dims", type=int, default=4, choices=(3, 4))
    p.add_argument("--points", type=int_in(1, 2**26), default=2**18)
    p.add_argument("--iters", type=int_in(1, 10_000), default=50)
    p.add_argument("--warmup", type=int_in(0, 1000), default=10)
    p.add_argument("--mode", default="default",
                   choices=("default", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode (default: %(default)s)")
    p.add_argument("--input-grad", action="store_true",
                   help="also d/dx (what the motion field and normals need)")
    p.add_argument("--json", metavar="OUT")


def add_parser(sub) -> None:
    p = sub.add_parser("hashgrid", help="hash-grid encoder speed, eager vs compiled",
                       description=__doc__)
    _arguments(p)
    p.set_defaults(func=main)

