"""Time the Blender extension's import of a result: F frames x N vertices into shape keys.

    .venv/bin/python scripts/bench_blender_import.py [--frames 24] [--vertices 50000]

Runs in real Blender (bpy from PyPI); prints JSON. The mesh is a random one of the given size
(the cost depends on the counts, not on the shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender_addon"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--vertices", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    import bpy
    from importer import import_animated_mesh

    from animate4d.protocol import AnimatedMesh

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
    print(json.dumps({"benchmark": "blender_import", "frames": f, "vertices": n,
                      "faces": 2 * n, "repeat": args.repeat,
                      "seconds_median": round(statistics.median(times), 3),
                      "seconds_max": round(max(times), 3),
                      "blender": bpy.app.version_string}, indent=2))


if __name__ == "__main__":
    main()
