"""Time the motion edits and pokes (protocol/spectrum.py, protocol/dynamics.py) on a result of
N vertices x F frames; with --blender, also the Result Motion panel's re-bake of the shape keys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/motion_edits.py [--vertices 50000] [--frames 48]
        [--repeat 7] [--blender]

Prints JSON: median and max milliseconds per case. The motion is a few random harmonics per
vertex plus a drift (the "not looping" clip) or without it (the loop); the cost depends on the
counts, not on the shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def clips(n: int, f: int):
    from animate4d.protocol import AnimatedMesh

    rng = np.random.default_rng(0)
    rest = rng.normal(size=(n, 3)).astype(np.float32)
    t = np.arange(f)[:, None, None] / f
    d = sum(rng.normal(scale=0.05 / k, size=(1, n, 3)) * np.sin(2 * np.pi * k * t + k)
            for k in (1, 2, 3))
    faces = rng.integers(0, n, size=(2 * n, 3)).astype(np.uint32)
    loop = AnimatedMesh(rest, faces, (rest + d).astype(np.float32), fps=24.0,
                        metadata={"loop": True})
    drifting = AnimatedMesh(rest, faces, (rest + d + 0.1 * t).astype(np.float32), fps=24.0,
                            metadata={"loop": False})
    return loop, drifting


def timed(fn, repeat: int) -> dict:
    fn()  # warm: first-call allocations
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"ms_median": round(1000 * statistics.median(times), 1),
            "ms_max": round(1000 * max(times), 1)}


def protocol_cases(loop, drifting):
    from animate4d.protocol import dynamics as dy
    from animate4d.protocol import spectrum as sp

    poke = [dy.Poke(7, (0.0, 0.0, 0.05))]
    return {
        "edit --loop (clip that does not loop)": lambda: sp.edit(drifting, loop=True),
        "edit --amplitude 2": lambda: sp.edit(loop, amplitude=2.0),
        "edit --band 1=2 (loop)": lambda: sp.edit(loop, bands={1: 2.0}),
        "edit --speed 1.5 (loop)": lambda: sp.edit(loop, speed=1.5),
        "edit --loop --amplitude 1.5 --speed 1.5 --reverse":
            lambda: sp.edit(drifting, loop=True, amplitude=1.5, speed=1.5, reverse_=True),
        "poke, 48 frames (loop)": lambda: dy.poke(loop, poke, frames=48),
        "poke, 48 frames (clip that does not loop)": lambda: dy.poke(drifting, poke, frames=48),
    }


def blender_cases(loop, drifting):
    import bpy

    sys.path.insert(0, str(ROOT))
    import blender_addon as addon
    from blender_addon import motion
    from blender_addon.importer import import_animated_mesh

    addon.register()
    scene = bpy.context.scene
    obj = import_animated_mesh(drifting, set_frame_range=True)
    motion.source_clip(obj, 24.0)  # the first edit keeps the source once
    force = (0.0, 0.0, 0.05)
    return {
        "blender: Apply Motion, Loop + Amplitude 1.5 (re-bake 48 keys)":
            lambda: motion.apply_motion(obj, scene, loop=True, amplitude=1.5, speed=1.0),
        "blender: Poke, 48 frames (re-bake 48 keys)":
            lambda: motion.poke(obj, scene, 7, force, damping=0.1, frames=48),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=50_000)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--blender", action="store_true",
                   help="also time the Blender panel's re-bake (needs bpy)")
    args = p.parse_args()
    loop, drifting = clips(args.vertices, args.frames)
    cases = protocol_cases(loop, drifting)
    if args.blender:
        cases |= blender_cases(loop, drifting)
    results = {name: timed(fn, args.repeat) for name, fn in cases.items()}
    print(json.dumps({"benchmark": "motion", "vertices": args.vertices, "frames": args.frames,
                      "repeat": args.repeat, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
