"""`python -m benchmarks clip-steps`: the dynamic stage's clip step without its priors (a clip of
`clip_frames` frames sampled as the stage samples them, rendered, a stand-in loss
backpropagated, gradient values clipped, the stage's own Adam at a rate of 0), with renderer
variants alternated step by step in one process (why: `view-steps`). This is the part
of the dynamic stage's SDS step that is not the priors. Variants:
  as-is       the renderer as it is;
  three-runs  the first pass in three runs, (8, 16);
  small-chunks  the fields called on at most `Renderer.POINT_CHUNK` points at a time (the
              default on CUDA is `FUSED_POINT_CHUNK`).
Each variant is a setting of the renderer's own parameters: the hash-grid kernels are timed
as the product runs them.
"""

from __future__ import annotations

import random
import statistics

from . import alternated, device_name, elapsed_ms, report
from .steps import add_arguments, stage_scene

VARIANTS = ("as-is", "three-runs", "small-chunks")
_OLD_RUNS = (8, 16)


def run(args) -> dict:
    import torch

    from animate4d.backend.pipeline.optimisation import optimise, stage_optimiser
    from animate4d.backend.pipeline.stages import sample_clip_views

    # The occupancy at the times the dynamic stage refreshes it at.
    device, preset, scene = stage_scene(args, [k / 8 for k in range(8)])
    renderer = scene.renderer
    runs, chunk = renderer.runs, renderer.point_chunk
    opt = stage_optimiser(scene, "dynamic", preset)
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
        renderer.point_chunk = renderer.POINT_CHUNK if variant == "small-chunks" else chunk
        def clip_step():
            frames, _, _ = scene.render(clip.cameras, clip.times, shading=clip.shading,
                                        background=clip.background)
            optimise(opt, {"stand_in": (frames - 0.5).square().mean()},
                     preset.clip_value("dynamic"))

        try:
            torch.manual_seed(k)
            ms = elapsed_ms(clip_step, device)
        finally:
            renderer.runs, renderer.point_chunk = runs, chunk
        shaded[variant].append(int(renderer.last_samples["shaded"]))
        return ms

    times = alternated(list(args.variants), ("clip",), step, args.iters, args.warmup)
    return {"benchmark": "clip-steps", "device": device_name(device), "state": args.state,
            "frames": preset.dynamic.clip_frames, "render_size": preset.renderer.size,
            "iters": args.iters,
            "ms": {v: round(statistics.median(x["clip"]), 2) for v, x in times.items()},
            "shaded": shaded,  # per clip, warm-up included
            "torch": torch.__version__}


def add_parser(sub) -> None:
    p = sub.add_parser("clip-steps", help="the dynamic stage's clip step (no priors), "
                       "renderer variants alternated in one process", description=__doc__)
    add_arguments(p, VARIANTS, 30, 3, "one clip step of each variant per round")
    p.set_defaults(func=lambda a: report(run(a), a.json))
