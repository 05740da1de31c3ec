"""`python -m benchmarks oracle-motion SCENE`: what the dynamic stage learns on the oracle
priors, measured on the motion field itself rather than on the exported mesh.

Runs the oracle job's stages up to the end of the dynamic stage (`oracle.bench.OracleJob`), then
at a few times t compares the learned backward warp D(x, t) at the truth's vertices x(t) with
the truth's own, x(0) - x(t): their mean lengths and the cosine between them where the truth
moves; and the albedo renders at t (four held-out views) with the truth's, beside the same
error for the rest pose rendered at t = 0. `--still` runs on the truth standing still, where
any learned motion is noise. The figures in docs/BENCHMARKS.md ("Oracle priors") come from it.
"""

from __future__ import annotations

import argparse
import time

TIMES = (0.125, 0.25, 0.375, 0.625)


def probe(job, truth, times=TIMES) -> list[dict]:
    """Per time: the learned and the true displacement at the truth's vertices, their cosine
    where the truth moves more than 30% of its largest move, and the image errors."""
    import torch

    from animate4d.backend.field.render import Shading
    from animate4d.backend.oracle.bench import HELDOUT
    from animate4d.backend.pipeline.cameras import orbit_camera

    scene = job.scene()
    size = job.config.renderer.size
    cams = [orbit_camera(p, a, size) for p, a in HELDOUT]
    dev = scene.device
    rest_pose = torch.as_tensor(truth.vertices(0.0), dtype=torch.float32, device=dev)
    rows = []
    for t in times:
        at_t = torch.as_tensor(truth.vertices(t), dtype=torch.float32, device=dev)
        want = rest_pose - at_t
        with torch.no_grad():
            got = scene.motion.displacement(at_t, t)
            look = Shading(mode="albedo")
            moved = scene.renderer.render(cams, [t] * 4, shading=look)["rgb"].clamp(0, 1)
            rest = scene.renderer.render(cams, [0.0] * 4, shading=look)["rgb"].clamp(0, 1)
        truth_img = truth.render_many(cams, [t] * len(cams)).rgb.permute(0, 2, 3, 1)
        reach = want.norm(dim=-1)
        moving = reach > 0.3 * reach.max() if float(reach.max()) > 1e-6 else None
        cos = (torch.nn.functional.cosine_similarity(got, want, dim=-1)[moving].mean()
               if moving is not None else torch.tensor(float("nan")))
        rows.append({"time": t, "learned_length": float(got.norm(dim=-1).mean()),
                     "true_length": float(reach.mean()), "cosine_where_moving": float(cos),
                     "image_mse": float((moved - truth_img).square().mean()),
                     "image_mse_rest_pose": float((rest - truth_img).square().mean())})
    return rows


def run(args) -> dict:
    import torch

    from animate4d.backend.config import override, parse_changes
    from animate4d.backend.oracle import bench
    from animate4d.backend.oracle.truth import GroundTruth
    from animate4d.protocol.options import JobOptions

    from . import device_name, pick_device

    device = pick_device(args.device)
    truth = GroundTruth.load(args.scene)
    if args.still:
        truth = truth.still()
    truth.to(device)
    config = override(bench.SIZES[args.size], {"refine.steps": 0, **parse_changes(args.set)})
    options = JobOptions(prompt="x", preset="fast", frames=bench.FRAMES[args.size],
                         seed=args.seed, loop=truth.loops)
    torch.manual_seed(args.seed)
    job = bench.OracleJob(truth, options, config, device, bench.VAE_FACTOR[args.size])
    t0 = time.perf_counter()
    out = {"benchmark": "oracle-motion", "scene": truth.name, "size": args.size,
           "device": device_name(device), "changes": args.set or [], "seed": args.seed}
    for stage in job.stages:
        if stage.name in ("refine", "export"):
            break
        if stage.setup(0) is not False:
            for step in range(stage.steps):
                stage.step(step)
        stage.release()
        if stage.name in ("static", "dynamic"):
            out[f"after_{stage.name}"] = probe(job, truth)
    out["seconds"] = time.perf_counter() - t0
    return out


def add_parser(sub) -> None:
    from . import int_in, report

    p = sub.add_parser("oracle-motion", help="the motion the dynamic stage learns on the "
                       "oracle priors, against the truth's",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("scene", help="a built-in scene (ball, bend, twist, lift) or an .a4d clip")
    p.add_argument("--still", action="store_true",
                   help="the truth standing still at its frame 0: any learned motion is noise")
    p.add_argument("--size", default="small", choices=("small", "full"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0)
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="change the size's config, e.g. optim.lr=1e-3 (repeatable)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
