"""What the `view-steps` and `clip-steps` benchmarks share: the scene their steps render (the
paper preset's fields, a fitted ball or the blob, a motion field that moves) and their
command-line options."""

from __future__ import annotations

from . import int_in, pick_device


def stage_scene(args, occupancy_times):
    """(device, preset, scene) for `args.device`, `args.state`, `args.tiny`; the occupancy
    grid refreshed at `occupancy_times`, as the stage being imitated refreshes it."""
    import torch

    from animate4d.backend.pipeline.config import PRESETS, tiny
    from animate4d.backend.pipeline.stages import Scene

    from .field import fit_solid_ball

    device = pick_device(args.device)
    preset = tiny(PRESETS["paper"], 10**6) if args.tiny else PRESETS["paper"]
    torch.manual_seed(0)
    scene = Scene(preset, device)
    if args.state == "fitted":
        fit_solid_ball(scene.canonical, steps=20 if args.tiny else 300)
    with torch.no_grad():  # a motion field that moves, as during and after the dynamic stage
        scene.motion.encoder.embeddings.uniform_(-0.05, 0.05)
    scene.refresh_occupancy(occupancy_times)
    return device, preset, scene


def add_arguments(p, variants: tuple[str, ...], iters: int, warmup: int, rounds: str) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--state", default="fitted", choices=("blob", "fitted"),
                   help="the canonical density: the initial blob or a fitted solid ball")
    p.add_argument("--variants", nargs="+", default=list(variants), choices=variants)
    p.add_argument("--iters", type=int_in(1, 1000), default=iters,
                   help=f"timed rounds ({rounds})")
    p.add_argument("--warmup", type=int_in(0, 100), default=warmup)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--json", metavar="OUT")
