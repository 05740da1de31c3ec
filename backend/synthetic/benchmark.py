"""The synthetic 4D benchmark: ground truth -> Blender renders -> fit -> extract -> scores.

`run(source, size=...)` takes a .glb with animation, a built-in scene name, or a .npz of
renders made earlier by `blender_views` (so the fit can run on a machine without Blender),
and returns a report with per-frame Chamfer distance and normal consistency, held-out PSNR
and mask IoU per frame, the fit's wall time and the peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from animate4d.protocol import Camera

from ..export.gltf import write_glb
from ..field.extract import extract
from ..field.fit import FitConfig, MultiViewClip, fit
from ..field.render import Shading, half_opaque_density, step_length
from ..runtime.devices import choose_device
from . import metrics
from .scenes import SCENES, scene

# blender_views puts every frame inside a sphere of radius 0.6: the field's box is a little larger.
BOUND = 0.7


@dataclass(frozen=True)
class Size:
    frames: int
    views: int
    heldout: int
    resolution: int
    render_samples: int
    fit: FitConfig
    mc_resolution: int
    target_faces: int
    eval_points: int = 30_000


SIZES = {
    # Minutes on a 2-core CPU: what the test suite runs.
    "small": Size(frames=4, views=16, heldout=2, resolution=64, render_samples=16,
                  fit=FitConfig(steps=500, rays=1024, frames_per_step=2, samples=64, lr=2e-2,
                                bound=BOUND,
                                canonical_grid=dict(levels=8, log2_table=15, base_resolution=8,
                                                    finest_resolution=128),
                                motion_grid=dict(levels=4, log2_table=13, base_resolution=4,
                                                 finest_resolution=32),
                                hidden=32, reg_points=512, occupancy_resolution=32),
                  mc_resolution=96, target_faces=20_000, eval_points=10_000),
    # The GPU benchmark at the pipeline's field sizes (the `paper` preset's grids).
    "full": Size(frames=16, views=16, heldout=4, resolution=128, render_samples=32,
                 fit=FitConfig(steps=6000, rays=8192, frames_per_step=4, samples=128,
                               bound=BOUND),
                 mc_resolution=256, target_faces=50_000),
}


@dataclass
class Views:
    """What blender_views wrote: training clip, held-out views, ground-truth meshes."""

    clip: MultiViewClip
    heldout_cameras: list[Camera]
    heldout_images: np.ndarray  # (F, H, h, w, 4) uint8
    gt_vertices: np.ndarray  # (F, N, 3), normalised frame
    gt_faces: np.ndarray
    fps: float
    source: str
    meta: dict = field(default_factory=dict)


def load_views(path: str | os.PathLike) -> Views:
    with np.load(path, allow_pickle=False) as d:
        cams = [Camera.from_dict(c) for c in json.loads(str(d["cameras"]))]
        held = set(int(i) for i in d["heldout"])
        train = [i for i in range(len(cams)) if i not in held]
        images = d["images"]
        return Views(
            clip=MultiViewClip([cams[i] for i in train], np.ascontiguousarray(images[:, train]),
                               d["times"].astype(np.float32)),
            heldout_cameras=[cams[i] for i in sorted(held)],
            heldout_images=np.ascontiguousarray(images[:, sorted(held)]),
            gt_vertices=d["gt_vertices"], gt_faces=d["gt_faces"].astype(np.int64),
            fps=float(d["fps"]), source=str(d["source"]))


def render_ground_truth(source: str, out: str, size: Size, *, python: str | None = None,
                        log=None) -> None:
    """Run blender_views in a Python that has bpy (this one unless `python` is given)."""
    python = python or sys.executable
    if source not in SCENES and not Path(source).is_file():
        raise ValueError(f"{source!r} is neither a file nor a built-in scene "
                         f"({', '.join(SCENES)})")
    with tempfile.TemporaryDirectory(prefix="animate4d_scene_") as tmpdir:
        glb = source
        if source in SCENES:
            glb = os.path.join(tmpdir, f"{source}.glb")
            write_glb(scene(source, size.frames), glb)
        cmd = [python, "-m", "animate4d.backend.synthetic.blender_views", glb, out,
               "--frames", str(size.frames), "--views", str(size.views),
               "--heldout", str(size.heldout), "--resolution", str(size.resolution),
               "--samples", str(size.render_samples)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        if any("No module named 'bpy'" in line for line in tail):
            raise RuntimeError(
                f"{python} has no bpy (Blender as a Python module), which renders the ground "
                "truth: `pip install bpy==5.0.1` in a Python 3.11 environment and pass it "
                "with --blender-python, or give a .npz of renders made elsewhere")
        raise RuntimeError("rendering the ground truth failed: " + " | ".join(tail))
    if log:
        log(f"ground truth rendered: {out}")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _mesh_scores(mesh, views: Views, size: Size, seed: int) -> tuple[list, list]:
    """Per-frame Chamfer (fraction of the clip's diagonal) and normal consistency."""
    rng = np.random.default_rng(seed)
    gt = views.gt_vertices
    diag = float(np.linalg.norm(gt.reshape(-1, 3).max(0) - gt.reshape(-1, 3).min(0)))
    chamfer, normals = [], []
    for k in range(len(gt)):
        a = metrics.sample_surface(mesh.frames[k], mesh.faces, size.eval_points, rng)
        b = metrics.sample_surface(gt[k], views.gt_faces, size.eval_points, rng)
        c, n = metrics.chamfer_and_normals(a, b, diag)
        chamfer.append(c)
        normals.append(n)
    return chamfer, normals


@torch.no_grad()
def score(views: Views, result, size: Size, device, seed: int = 0) -> dict:
    """Extract the animated mesh and score it frame by frame against the truth."""
    fitc = size.fit
    t0 = time.perf_counter()
    mesh, report = extract(result.canonical, result.motion, frames=len(views.clip.times),
                           fps=views.fps, bound=fitc.bound, resolution=size.mc_resolution,
                           threshold=half_opaque_density(step_length(fitc.bound, fitc.samples)),
                           target_faces=size.target_faces, device=device)
    extract_s = time.perf_counter() - t0
    chamfer, normals = _mesh_scores(mesh, views, size, seed)
    psnr, iou = [], []
    n_held = len(views.heldout_cameras)
    for k, t in enumerate(views.clip.times):
        out = result.renderer.render(views.heldout_cameras, [float(t)] * n_held,
                                     shading=Shading(mode="albedo"), background=(1.0, 1.0, 1.0))
        gt_img = views.heldout_images[k].astype(np.float32) / 255.0
        a = gt_img[..., 3:]
        gt_rgb = gt_img[..., :3] * a + (1 - a)
        psnr.append(metrics.psnr(out["rgb"].clamp(0, 1).cpu().numpy(), gt_rgb))
        iou.append(metrics.mask_iou(out["alpha"].cpu().numpy() > 0.5, a[..., 0] > 0.5))
    return {
        "mesh": mesh,
        "chamfer_per_frame": chamfer, "normal_consistency_per_frame": normals,
        "psnr_heldout_per_frame": psnr, "iou_heldout_per_frame": iou,
        "chamfer_mean": float(np.mean(chamfer)), "chamfer_max": float(np.max(chamfer)),
        "normal_consistency_mean": float(np.mean(normals)),
        "psnr_heldout": float(np.mean(psnr)), "iou_heldout": float(np.mean(iou)),
        "extract_seconds": extract_s, **{f"extract_{k}": v for k, v in report.items()},
    }


def run(source: str, *, size: str = "small", device: str = "cpu", steps: int | None = None,
        distortion: float | None = None, blender_python: str | None = None,
        keep_views: str | None = None,
        out_dir: str | None = None, log=None) -> dict:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    sz = SIZES[size]
    if steps is not None:
        if not 1 <= steps <= 1_000_000:
            raise ValueError("steps must be within 1..1000000")
        sz = replace(sz, fit=replace(sz.fit, steps=steps))
    if distortion is not None:
        if not 0 <= distortion <= 1:
            raise ValueError("distortion must be within 0..1")
        sz = replace(sz, fit=replace(sz.fit, w_distortion=distortion))
    dev = choose_device(device)
    t0 = time.perf_counter()
    # Renders nobody asked to keep live in a folder that goes whatever happens.
    with tempfile.TemporaryDirectory(prefix="animate4d_views_") as tmpdir:
        if source.endswith(".npz"):
            views_path, render_s = source, 0.0
        else:
            views_path = keep_views or os.path.join(tmpdir, "views.npz")
            render_ground_truth(source, views_path, sz, python=blender_python, log=log)
            render_s = time.perf_counter() - t0
        views = load_views(views_path)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t1 = time.perf_counter()
    result = fit(views.clip, sz.fit, device=dev, progress=_progress_logger(log))
    scores = score(views, result, sz, dev)
    seconds = time.perf_counter() - t1
    mesh = scores.pop("mesh")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_glb(mesh, Path(out_dir) / "fitted.glb")
    return {
        "source": views.source, "size": size, "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "frames": len(views.clip.times), "views": len(views.clip.cameras),
        "heldout_views": len(views.heldout_cameras),
        "resolution": list(views.clip.cameras[0].resolution), "steps": sz.fit.steps,
        **scores,
        "seconds": seconds, "fit_seconds": result.seconds, "render_gt_seconds": render_s,
        "peak_bytes": peak_bytes(dev),
        "final_train_psnr": result.history[-1].get("psnr") if result.history else None,
    }


def _progress_logger(log):
    if log is None:
        return None

    def progress(step, total, losses):
        if step % 250 == 0 or step == total:
            log(f"step {step}/{total} " + " ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return progress
