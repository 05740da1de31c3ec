"""`animate4d bench clip-steps`: the dynamic stage's clip step without its priors (a clip of
`clip_frames` frames sampled as the stage samples them, rendered, a stand-in loss
backpropagated, gradient values clipped, the stage's own Adam at a rate of 0), with renderer
variants alternated step by step in one process (why: `bench view-steps`). This is the part
of the dynamic stage's SDS step that is not the priors. Variants:
  as-is       the renderer as it is;
  three-runs  the first pass in three runs, (8, 16), as before session 14;
  no-copies   the hash grids' backward pass without the coarse levels' gradient copies
              (`hashgrid_triton.REPLICAS` = 1; the copies exist only in the Triton kernels,
              which run on CUDA).
"""

from __future__ import annotations

import random
import statistics
import time

from . import alternated, device_name, int_in, pick_device, report

VARIANTS = ("as-is", "three-runs", "no-copies")
_OLD_RUNS = (8, 16)


def run(args) -> dict:
    import torch

    from ..field import hashgrid_triton
    from ..pipeline.presets import PRESETS, tiny
    from ..pipeline.run import _optimiser, optimise
    from ..pipeline.stages import Scene, sample_clip_views
    from .field import fit_solid_ball

    device = pick_device(args.device)
    preset = tiny(PRESETS["paper"], 10**6) if args.tiny else PRESETS["paper"]
    torch.manual_seed(0)
    scene = Scene(preset, device)
    if args.state == "fitted":
        fit_solid_ball(scene.canonical, steps=20 if args.tiny else 300)
    with torch.no_grad():  # a motion field that moves, as during the dynamic stage
        scene.motion.encoder.embeddings.uniform_(-0.05, 0.05)
    scene.refresh_occupancy([k / 8 for k in range(8)])  # as the dynamic stage does
    renderer = scene.renderer
    runs, replicas = renderer.runs, hashgrid_triton.REPLICAS
    opt = _optimiser(scene, "dynamic", preset)
    for group in opt.param_groups:  # the step's arithmetic, not its effect on the object
        group["lr"] = 0.0
    # Every variant renders the same clips in the same order, with the same jitter.
    rng = random.Random(0)
    clips = [sample_clip_views(rng, preset, 0.5) for _ in range(args.warmup + args.iters)]
    shaded: dict[str, list[int]] = {v: [] for v in args.variants}

    def step(kind: str, variant: str) -> float:
        k = len(shaded[variant])
        clip = clips[k]
        renderer.runs = _OLD_RUNS if variant == "three-runs" else runs
        hashgrid_triton.REPLICAS = 1 if variant == "no-copies" else replicas
        try:
            torch.manual_seed(k)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            frames, _, _ = scene.render(clip.cameras, clip.times, shading=clip.shading,
                                        background=clip.background)
            optimise(opt, {"stand_in": (frames - 0.5).square().mean()},
                     preset.clip_value("dynamic"))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = (time.perf_counter() - t0) * 1e3
        finally:
            renderer.runs, hashgrid_triton.REPLICAS = runs, replicas
        shaded[variant].append(int(renderer.last_samples["shaded"]))
        return ms

    times = alternated(list(args.variants), ("clip",), step, args.iters, args.warmup)
    return {"benchmark": "clip-steps", "device": device_name(device), "state": args.state,
            "frames": preset.clip_frames, "render_size": preset.render_size,
            "iters": args.iters,
            "ms": {v: round(statistics.median(x["clip"]), 2) for v, x in times.items()},
            "shaded": shaded,  # per clip, warm-up included
            "torch": torch.__version__}


def add_parser(sub) -> None:
    p = sub.add_parser("clip-steps", help="the dynamic stage's clip step (no priors), "
                       "renderer variants alternated in one process", description=__doc__)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--state", default="fitted", choices=("blob", "fitted"),
                   help="the canonical density: the initial blob or a fitted solid ball")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--iters", type=int_in(1, 1000), default=30,
                   help="timed rounds (one clip step of each variant per round)")
    p.add_argument("--warmup", type=int_in(0, 100), default=3)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
