"""`python -m benchmarks view-steps`: the static stage's two kinds of step without their priors
(its SDS view: one random view with the stage's random shading, and the reference view lit by
albedo; each rendered, a stand-in loss backpropagated, one Adam step), with renderer variants
alternated step by step in one process.

Why alternated: the static stage is bound by the host, and one H100 differs from another, or
from itself a minute later, by several ms per step (docs/BENCHMARKS.md); an A/B of a few ms
decided by separate runs is decided by the noise. Variants:
  as-is       the renderer as it is;
  first-pass  the first pass at a lower threshold (`prune_above` 2^19: the SDS view's
              ~920 k points to shade on a fitted object go through the no-grad first pass);
  warp-at-0   time 0 sent through the motion field (every static-stage render and
              reference step would look up D(x, 0) = 0, which the renderer skips).
"""

from __future__ import annotations

import random
import statistics

from . import alternated, device_name, elapsed_ms, report
from .steps import add_arguments, stage_scene

VARIANTS = ("as-is", "first-pass", "warp-at-0")
_NOT_ZERO = 1e-30  # a time that is not 0 (so the warp runs) and moves nothing
_OLD_PRUNE_ABOVE = 2**19


def run(args) -> dict:
    import torch

    from animate4d.backend.field.render import Shading
    from animate4d.backend.pipeline.cameras import orbit_camera, random_view
    from animate4d.backend.pipeline.stages import sds_look
    from animate4d.backend.preprocess.framing import canonical_camera

    device, preset, scene = stage_scene(args, (None,))
    default_prune = scene.renderer.prune_above
    # The step's Adam arithmetic, at a rate of 0: the stand-in losses must not wear the
    # fitted object away while it is timed.
    opt = torch.optim.Adam(scene.canonical.parameters(), lr=0.0)
    rng = random.Random(0)
    reference_camera = canonical_camera(preset.renderer.size)

    def use(variant: str) -> None:
        scene.renderer.prune_above = (_OLD_PRUNE_ABOVE if variant == "first-pass"
                                      else default_prune)

    def step(kind: str, variant: str) -> float:
        use(variant)
        t = [_NOT_ZERO if variant == "warp-at-0" else 0.0]

        def view_step():
            if kind == "sds":
                polar, az = random_view(rng, preset.views)
                shading, background = sds_look(rng, preset, "static", 0.5)
                rgb, _, _ = scene.render([orbit_camera(polar, az, preset.renderer.size)], t,
                                         shading=shading, background=background)
                loss = (rgb - 0.5).square().mean()
            else:
                rgb, alpha, _ = scene.render([reference_camera], t)
                loss = rgb.square().mean() + alpha.mean()
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()

        return elapsed_ms(view_step, device)

    variants = list(args.variants)
    times = alternated(variants, ("sds", "reference"), step, args.iters, args.warmup)
    shaded = {}
    for v in variants:  # what each variant shades of an SDS-like view
        use(v)
        with torch.no_grad():
            scene.render([orbit_camera(80.0, 30.0, preset.renderer.size)], [0.0],
                         shading=Shading(mode="lambertian"))
        shaded[v] = {k: int(x) for k, x in scene.renderer.last_samples.items()}
    use("as-is")
    return {"benchmark": "view-steps", "device": device_name(device), "state": args.state,
            "render_size": preset.renderer.size, "iters": args.iters,
            "ms": {v: {k: round(statistics.median(x), 2) for k, x in times[v].items()}
                   for v in variants},
            "samples": shaded, "torch": torch.__version__}


def add_parser(sub) -> None:
    p = sub.add_parser("view-steps", help="the static stage's render steps (no priors), "
                       "renderer variants alternated in one process", description=__doc__)
    add_arguments(p, VARIANTS, 50, 5, "each variant's two steps per round")
    p.set_defaults(func=lambda a: report(run(a), a.json))
