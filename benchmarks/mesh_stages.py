"""`python -m benchmarks mesh-stages`: mesh mode's cost at a GPU preset's sizes.

The preset's mesh job (`meshmode.animate.MeshAnimate`) on random weights (or `--models DIR`,
e.g. the tiny models) and a built-in scene's rest pose as the artist's mesh: the canonical fit
timed whole, the dynamic stage's step (video SDS, regularisers, ARAP) timed over `--steps`
consecutive steps after `--warmup`, the export timed whole; the preset's whole job projected
from them (priors' loading not included).
"""

from __future__ import annotations

import argparse
import time


def run(args) -> dict:
    import torch

    from animate4d.backend.meshmode.animate import MeshAnimate, for_mesh
    from animate4d.backend.oracle.bench import rest_pose
    from animate4d.backend.oracle.truth import GroundTruth
    from animate4d.backend.pipeline.config import PRESETS, tiny
    from animate4d.backend.synthetic.benchmark import peak_bytes
    from animate4d.protocol.options import JobOptions

    from . import device_name, pick_device

    device = pick_device(args.device)
    truth = GroundTruth.load(args.scene)
    source = rest_pose(truth)
    preset = PRESETS[args.preset]
    config = for_mesh(tiny(preset, max_steps=10_000) if args.tiny_sizes else preset)
    options = JobOptions(prompt=f"the {truth.name} is moving", preset=args.preset,
                         frames=args.frames, seed=0)
    job = MeshAnimate(source, options, config, device=device, models=args.models,
                      random_weights=args.models is None)
    fit, dynamic, export = job.stages

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def whole(stage) -> float:
        t0 = time.perf_counter()
        stage.setup(0)
        for step in range(stage.steps):
            stage.step(step)
        stage.release()
        sync()
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {"benchmark": "mesh-stages", "preset": args.preset, "device": device_name(device),
           "scene": truth.name, "vertices": len(source.vertices), "frames": args.frames,
           "fit_steps": config.mesh.fit_steps, "dynamic_steps": config.dynamic.steps}
    out["fit_seconds"] = whole(fit)
    dynamic.setup(0)
    for step in range(args.warmup):
        dynamic.step(step)
    sync()
    t0 = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        dynamic.step(step)
    sync()
    out["dynamic_ms_per_step"] = 1000 * (time.perf_counter() - t0) / args.steps
    dynamic.release()
    out["export_seconds"] = whole(export)
    out["projected_minutes"] = (out["fit_seconds"] + out["export_seconds"]
                                + out["dynamic_ms_per_step"] / 1000 * out["dynamic_steps"]) / 60
    out["peak_bytes"] = peak_bytes(device)
    return out


def add_parser(sub) -> None:
    from . import int_in, report

    p = sub.add_parser("mesh-stages", help="mesh mode's canonical fit, dynamic step and "
                       "export at a GPU preset's sizes, and its projected time",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="fast", choices=("fast", "paper"))
    p.add_argument("--scene", default="bend", help="a built-in scene whose rest pose is the mesh")
    p.add_argument("--frames", type=int_in(2, 64), default=16)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--steps", type=int_in(1, 1000), default=20, help="timed dynamic steps")
    p.add_argument("--warmup", type=int_in(0, 100), default=5)
    p.add_argument("--models", metavar="DIR",
                   help="models folder (default: random weights at the real sizes)")
    p.add_argument("--tiny-sizes", action="store_true",
                   help="the tiny models' renders and fields (with --models from "
                        "`animate4d models make-tiny`)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
