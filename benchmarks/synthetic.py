"""`python -m benchmarks synthetic GT.glb|SCENE|VIEWS.npz`: fit the field to Blender renders of an
animated mesh with known motion and score the extracted animated mesh (see
backend/synthetic/benchmark.py for what is measured and how)."""

from __future__ import annotations

import sys

from . import report


def main(args) -> int:
    from animate4d.backend.synthetic import benchmark

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        result = benchmark.run(args.source, size=args.size, device=args.device,
                               steps=args.steps, distortion=args.distortion,
                               blender_python=args.blender_python,
                               keep_views=args.keep_views, out_dir=args.out, log=log)
    except (ValueError, RuntimeError) as e:
        print(f"benchmarks synthetic: {e}", file=sys.stderr)
        return 2
    return report(result, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synthetic", help="fit the 4D field to renders of a known animated mesh and score it",
        description=__doc__ + "\n\nBuilt-in scenes: ball, bend, twist.")
    p.add_argument("source", help="a .glb with animation, a built-in scene name, or a .npz "
                                  "of renders written earlier with --keep-views")
    p.add_argument("--size", default="small", choices=("small", "full"),
                   help="small: minutes on a CPU; full: the GPU benchmark (default: small)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--steps", type=int, help="override the size's optimisation steps")
    p.add_argument("--distortion", type=float, metavar="W",
                   help="weight of the fit's distortion loss (default: the size's)")
    p.add_argument("--blender-python", metavar="PY",
                   help="a Python with bpy for the ground-truth renders (default: this one)")
    p.add_argument("--keep-views", metavar="NPZ", help="keep the ground-truth renders here")
    p.add_argument("--out", metavar="DIR", help="write the fitted animated mesh (fitted.glb)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this file")
    p.set_defaults(func=main)
