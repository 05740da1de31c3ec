"""Wall time and peak memory of `animate4d run --preset preview`, as a user would run it.

Each repeat is a fresh `animate4d run` process (imports, loading, writing every file included);
peak memory is the child's maximum resident set size as the kernel reports it.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from animate4d.backend.commands.local import DEMO_IMAGE, DEMO_PROMPT
from animate4d.backend.mesh.raster import iou, silhouette
from animate4d.backend.preprocess.image_io import load_image
from animate4d.backend.preprocess.segment import foreground_mask
from animate4d.protocol import AnimatedMesh, Camera, a4d
from animate4d.protocol.limits import MAX_FRAMES

from . import int_in, report


def frame0_iou(mesh: AnimatedMesh, image: Path) -> float:
    """IoU of frame 0 seen through the result's reference camera with the input's foreground."""
    img = load_image(image)
    mask = foreground_mask(img, seed=mesh.metadata.get("seed", 0)) > 0.5
    camera = Camera.from_dict(mesh.metadata["reference_camera"])
    return iou(silhouette(mesh.frame_world(0), mesh.faces, camera), mask)


def run_once(image: Path, out: Path, frames: int, extra: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "animate4d.backend", "run", str(image), "--prompt", DEMO_PROMPT,
           "--preset", "preview", "--frames", str(frames), "--fps", "24", "--out", str(out),
           "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed: {proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main(args) -> int:
    extra = ["--no-preview"] if args.no_preview else []
    times, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.image:
            image = Path(args.image)
        else:
            image = Path(tmp) / DEMO_IMAGE
            image.write_bytes(resources.files("animate4d.backend")
                              .joinpath("examples", DEMO_IMAGE).read_bytes())
        for i in range(args.repeat):
            s, peak = run_once(image, Path(tmp) / f"r{i}", args.frames, extra)
            times.append(s)
            peaks.append(peak)
            print(f"  run {i + 1}/{args.repeat}: {s:.2f} s, peak {peak / 2**20:.0f} MiB",
                  file=sys.stderr)
        mesh = a4d.load(Path(tmp) / "r0" / "result.a4d")
        coverage = frame0_iou(mesh, image)
    result = {
        "benchmark": "preview",
        "image": str(image.name),
        "frames": args.frames,
        "preview_gif": not args.no_preview,
        "repeat": args.repeat,
        "seconds_median": round(statistics.median(times), 3),
        "seconds_max": round(max(times), 3),
        "peak_bytes_max": max(peaks),
        "vertices": mesh.num_vertices,
        "faces": mesh.num_faces,
        "iou_frame0": round(coverage, 4),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
    }
    return report(result, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser("preview", help="time and memory of preview mode on the bundled example",
                       description=__doc__)
    p.add_argument("--image", help="image to use (default: the bundled 1024 px example)")
    p.add_argument("--frames", type=int_in(1, MAX_FRAMES), default=24,
                   help="frames (default: %(default)s)")
    p.add_argument("--repeat", type=int_in(1, 100), default=3, help="runs (default: %(default)s)")
    p.add_argument("--no-preview", action="store_true", help="leave out preview.gif")
    p.add_argument("--json", metavar="OUT", help="also write the figures to OUT")
    p.set_defaults(func=main)
