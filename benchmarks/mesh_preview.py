"""Preview mesh mode at the issue's size: `animate4d run MESH.glb` on a 50k-vertex textured
tree (a trunk with a separate crown resting on it), as a user runs it.

Each repeat is a fresh `animate4d run --preset preview` process with the prompt 'a panda is
dancing' (sway + bounce + twist): imports, reading the glb, the rig, the motion and writing
result.a4d and result.glb included; peak memory is the child's maximum resident set size.
Prints one JSON object.

    .venv/bin/python benchmarks/mesh_preview.py [--vertices 50000] [--frames 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # run as a script from a checkout

from benchmarks.preview import run_once  # noqa: E402  (`animate4d run` as a fresh process)


def write_tree(path: Path, vertices: int) -> int:
    """A crown (icosphere) on a trunk (cylinder), about `vertices` in all, UVs and a texture."""
    import trimesh
    from PIL import Image

    crown = trimesh.creation.icosphere(subdivisions=6, radius=0.5)  # 40962 vertices
    trunk = trimesh.creation.cylinder(radius=0.1, height=1.0, sections=64)
    edge = 0.2
    while True:
        v, f = trimesh.remesh.subdivide_to_size(trunk.vertices, trunk.faces, edge)
        if len(v) + len(crown.vertices) >= vertices or edge < 1e-3:
            break
        edge *= 0.8
    trunk = trimesh.Trimesh(v, f, process=False)
    trunk.apply_translation([0, 0, 0.5])
    crown.apply_translation([0, 0, 1.49])
    rng = np.random.default_rng(0)
    tex = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    scene = trimesh.Scene()
    for name, m in (("trunk", trunk), ("crown", crown)):
        m.visual = trimesh.visual.TextureVisuals(
            uv=rng.random((len(m.vertices), 2)),
            material=trimesh.visual.material.PBRMaterial(name="bark", baseColorTexture=tex))
        m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
        scene.add_geometry(m, node_name=name)
    path.write_bytes(scene.export(file_type="glb", include_normals=True))
    return len(trunk.vertices) + len(crown.vertices)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=50_000)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--preview", action="store_true", help="also write preview.gif")
    args = p.parse_args()
    extra = [] if args.preview else ["--no-preview"]
    with tempfile.TemporaryDirectory() as tmp:
        glb = Path(tmp) / "tree.glb"
        n = write_tree(glb, args.vertices)
        times, peaks = [], []
        for i in range(args.repeat):  # the same runner as image preview's benchmark
            s, peak = run_once(glb, Path(tmp) / f"r{i}", args.frames, extra)
            times.append(s)
            peaks.append(peak)
            print(f"  run {i + 1}/{args.repeat}: {s:.2f} s, peak {peak / 2**20:.0f} MiB",
                  file=sys.stderr)
        from animate4d.protocol import a4d

        timings = a4d.load(Path(tmp) / "r0" / "result.a4d").metadata["timings"]
    print(json.dumps({
        "benchmark": "mesh_preview", "vertices": n, "frames": args.frames,
        "preview_gif": args.preview, "repeat": args.repeat,
        "seconds_median": round(statistics.median(times), 3),
        "seconds_max": round(max(times), 3),
        "peak_bytes_max": max(peaks), "stage_seconds_run0": timings,
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
