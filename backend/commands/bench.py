"""`animate4d bench gpu`: this machine's time per step of each Animate124 stage and the
resulting time of each preset; `animate4d bench oracle`: the whole job on priors that know a
ground truth, scored against it (developer micro-benchmarks live in the checkout's
benchmarks/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from animate4d.protocol.errors import InvalidRequestError

from ..config import parse_changes
from ..runtime.devices import choose_device, limit_memory
from .args import whole_number


def cmd_gpu(args) -> int:
    from ..pipeline import costs

    if not args.random_weights:
        from ..pipeline.run import check_models

        check_models(args.preset, args.models)
    elif args.models:
        raise InvalidRequestError("--random-weights and --models exclude each other",
                                  hint="drop one of them")
    device = choose_device(args.device)
    if args.memory_limit_gib is not None:
        limit_memory(device, args.memory_limit_gib)
    result = costs.bench(args.preset, device=device, models=args.models,
                         random_weights=args.random_weights, steps=args.steps,
                         warmup=args.warmup,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    result["memory_limit_gib"] = args.memory_limit_gib
    for name, p in result["presets"].items():
        stages = ", ".join(f"{k} {v:g}" for k, v in p["minutes"].items())
        print(f"{name}: {p['total_minutes']:g} min on {result['device']} ({stages})",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_oracle(args) -> int:
    from ..oracle import bench

    def log(line):
        print(line, file=sys.stderr, flush=True)

    kw = {"size": args.size, "device": args.device, "seed": args.seed, "log": log,
          "mesh": args.mesh}
    try:
        if args.set:
            kw["changes"] = parse_changes(args.set)
        result = (bench.run_ab(args.scene, args.ab, **kw) if args.ab
                  else bench.run(args.scene, **kw))
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    runs = result["runs"] if args.ab else {"": result}
    for name, r in runs.items():
        if args.mesh:
            scores = (f"vertex error mean {100 * r['vertex_error_mean']:.2f}% of the diagonal "
                      f"(max {100 * r['vertex_error_max']:.2f}%; no motion at all: mean "
                      f"{100 * r['still_error_mean']:.2f}%), Chamfer mean "
                      f"{100 * r['chamfer_mean']:.2f}%, held-out PSNR "
                      f"{r['psnr_heldout']:.1f} dB")
        else:
            scores = (f"Chamfer mean {100 * r['chamfer_mean']:.2f}% of the diagonal (max "
                      f"{100 * r['chamfer_max']:.2f}%), held-out PSNR "
                      f"{r['psnr_heldout']:.1f} dB")
        log(f"{(name + ': ') if name else ''}{scores}, {r['seconds']:.0f} s on "
            f"{r['gpu'] or r['device']}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="measure this machine (what a preset costs here)",
                           description="Measurements of this machine. Developer "
                                       "micro-benchmarks run from a checkout: "
                                       "python -m benchmarks --help.")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench_sub.required = True
    p = bench_sub.add_parser(
        "gpu", help="each Animate124 stage's time per step and peak memory, and each preset's "
                    "projected time",
        description="Runs each stage of the preset for --warmup + --steps consecutive steps "
                    "of its own schedule (from the middle of it) and projects each preset's "
                    "whole schedule. Prints a line per preset on stderr and JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=("paper", "fast"),
                   help="the preset whose sizes are measured")
    p.add_argument("--models", metavar="DIR",
                   help="models folder (default: ANIMATE4D_MODELS, then the Hugging Face "
                        "cache); tiny random models measure the tiny sizes")
    p.add_argument("--random-weights", action="store_true",
                   help="the real architectures with random weights: the real cost, no model "
                        "files needed")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--steps", type=whole_number(1, 1000), default=32,
                   help="timed steps per stage (1-1000)")
    p.add_argument("--warmup", type=whole_number(0, 200), default=8,
                   help="untimed steps per stage first (0-200): CUDA graphs, compiling")
    p.add_argument("--memory-limit-gib", type=whole_number(1, 1024), metavar="GIB",
                   help="hold the process to this much GPU memory, as on a smaller card")
    p.add_argument("--json", metavar="OUT", help="also write the JSON here")
    p.set_defaults(func=cmd_gpu)

    p = bench_sub.add_parser(
        "oracle", help="the whole Animate124 job (or mesh mode's, --mesh) on priors that "
                       "know a ground-truth animated object, scored against it",
        description="Every prior is replaced by one that knows the ground truth (SD and "
                    "ControlNet-tile: its render from the same camera and time; Zero123: its "
                    "render from the pose passed; video: its clip from the same cameras at the "
                    "clip's instants in playing order), then static, dynamic, refine and "
                    "export run as in a job. Scores: Chamfer distance per frame as a fraction "
                    "of the clip's diagonal, PSNR on held-out views. Prints JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("scene", metavar="SCENE",
                   help="a built-in scene (ball, bend, twist, lift: lift does not loop) or "
                        "an .a4d clip")
    p.add_argument("--size", default="small", choices=("small", "full"),
                   help="small: minutes on a CPU; full: the paper's fields and renders")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--seed", type=whole_number(0, 2**31 - 1), default=0, help="the job's seed")
    p.add_argument("--mesh", action="store_true",
                   help="mesh mode (fast, paper on an artist's mesh): the truth's first frame "
                        "is the input mesh; scored per vertex (the same vertices), as fractions "
                        "of the diagonal")
    p.add_argument("--ab", choices=("mirror", "normals"),
                   help="run twice: mirror: clips mirrored forward (Animate124) against "
                        "played backwards; normals: world against canonical normals")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="change the size's config, e.g. dynamic.steps=400 (repeatable)")
    p.add_argument("--json", metavar="OUT", help="also write the JSON here")
    p.set_defaults(func=cmd_oracle)
