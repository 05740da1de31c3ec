"""Time the Blender extension's import of a result: F frames x N vertices into shape keys.

    python -m benchmarks blender-import [--frames 24 --vertices 50000 --repeat 5]

Runs in real Blender (bpy from PyPI, installed by `scripts/setup.sh --test`). The mesh is a
random one of the given size (the cost depends on the counts, not on the shape).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.limits import MAX_FRAMES, MAX_VERTICES

from . import int_in, report

ADDON = Path(__file__).resolve().parents[1] / "blender_addon"


def run(args) -> dict:
    import bpy

    sys.path.insert(0, str(ADDON))  # the extension's modules, as Blender loads them
    from importer import import_animated_mesh

    rng = np.random.default_rng(0)
    n, f = args.vertices, args.frames
    v = rng.normal(size=(n, 3)).astype(np.float32)
    mesh = AnimatedMesh(
        vertices=v, faces=rng.integers(0, n, size=(2 * n, 3)).astype(np.uint32),
        frames=v[None] + rng.normal(scale=0.01, size=(f, n, 3)).astype(np.float32),
        colors=rng.integers(0, 256, (n, 4), dtype=np.uint8), transform=np.eye(4))
    times = []
    for _ in range(args.repeat):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        t0 = time.perf_counter()
        import_animated_mesh(mesh, set_frame_range=True)
        times.append(time.perf_counter() - t0)
    return {"benchmark": "blender-import", "frames": f, "vertices": n, "faces": 2 * n,
            "repeat": args.repeat, "seconds_median": round(statistics.median(times), 3),
            "seconds_max": round(max(times), 3), "blender": bpy.app.version_string}


def add_parser(sub) -> None:
    p = sub.add_parser("blender-import", help="the Blender extension's import of a result "
                       "into shape keys", description=__doc__)
    p.add_argument("--frames", type=int_in(1, MAX_FRAMES), default=24)
    p.add_argument("--vertices", type=int_in(3, MAX_VERTICES), default=50_000)
    p.add_argument("--repeat", type=int_in(1, 100), default=5)
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
