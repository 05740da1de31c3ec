"""`animate4d bench oracle`: the whole Animate124 job on oracle priors, scored against the
ground truth they know.

The job is the production one (`pipeline.run.Animate124`: static -> dynamic -> refine ->
export, the same stages, losses, schedules and SDS path) with two changes only: the priors are
the oracles (`oracle.priors`), and preprocessing is the truth's frame 0 from the reference
camera with its exact mask and inverse depth (no segmenter, no depth estimator, no learned
token: the oracles read no text). The result is scored as `bench synthetic` scores a fit:
Chamfer distance per frame as a fraction of the clip's diagonal, PSNR on held-out views.

Mesh mode (`mesh=True`, `bench oracle --mesh`): the GPU presets' mesh-mode job
(`meshmode.animate.MeshAnimate`: canonical fit -> dynamic with ARAP -> export) given the
truth's rest pose, frame 0's mesh, as the artist's mesh, on the same oracle priors. The truth is
placed in the object frame mesh mode puts that mesh in, so the oracles render what the job's
scene holds. Its result has the truth's own vertices, so it is scored per vertex (no Chamfer):
each frame's distance from each vertex to where the truth has it at that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from animate4d.protocol.options import JobOptions

from ..field.render import Shading
from ..jobs.method import Stage, run_method
from ..meshmode.animate import MeshAnimate, for_mesh
from ..meshmode.canonical import ObjectFrame
from ..meshmode.source import MeshSource
from ..pipeline import stages
from ..pipeline.cameras import orbit_camera
from ..pipeline.config import FAST, PAPER, Animate124Config, override
from ..pipeline.run import Animate124, PriorPool
from ..priors.guidance import SD, TILE, VIDEO, ZERO123
from ..runtime.devices import choose_device
from ..synthetic import metrics
from ..synthetic.benchmark import peak_bytes
from .priors import RenderLog, oracle_priors
from .truth import GroundTruth

SIZES: dict[str, Animate124Config] = {
    # Minutes on a 2-core CPU.
    "small": override(FAST, {
        "renderer.size": 24, "renderer.samples": 24,
        "field.grid_levels": 8, "field.grid_log2_table": 15, "field.occupancy_resolution": 32,
        "guidance.sd": replace(SD, size=24), "guidance.zero123": replace(ZERO123, size=24),
        "guidance.video": replace(VIDEO, size=24), "guidance.tile": replace(TILE, size=48),
        "dynamic.clip_frames": 4, "dynamic.time_steps": 8, "dynamic.clip_span": (4, 8),
        "refine.render_size": 24, "export.resolution": 96, "export.faces": 20_000,
        # The blob start needs the paper's thousands of static steps to carve an object out
        # of it; the preview proxy (the reference silhouette inflated) starts near one.
        "static.init": "proxy", "static.proxy_steps": 100,
        "static.steps": 400, "reference.first": 10,
        # The motion needs its steps: with world normals bend's Chamfer is 0.96% after 1,200
        # dynamic steps, 0.91% after 2,400 (docs/BENCHMARKS.md "Oracle priors").
        "dynamic.steps": 1200,
        "refine.steps": 30, "checkpoint_every": 10_000}),
    # The paper's fields and renders; the clip timeline on 32 steps, which bounds the video
    # oracle's renders per step (frames x 33).
    "full": override(PAPER, {
        "dynamic.time_steps": 32, "dynamic.clip_span": (16, 32),
        "static.steps": 2000, "dynamic.steps": 2000, "refine.steps": 500}),
}

# Mesh mode's sizes: the fields, renders and clips as above. Small: the winding-number grid
# the canonical field is fitted from at 64 cells a side, twice the field's occupancy grid (as
# on the tiny models), and the ARAP term on 256 one-rings a step, as on the tiny models: on all
# of a 3,000-vertex truth it took three quarters of a CPU step.
MESH_SIZES: dict[str, Animate124Config] = {
    "small": override(for_mesh(SIZES["small"]), {
        "mesh.fit_steps": 300, "mesh.fit_points": 2**13, "mesh.occupancy_resolution": 64,
        "mesh.arap_vertices": 256}),
    "full": for_mesh(SIZES["full"]),
}

# The latents are the render average-pooled by this (SD's VAE: 8; the small sizes' 24-px
# priors would then see 3 x 3 latents).
VAE_FACTOR = {"small": 2, "full": 8}
FRAMES = {"small": 8, "full": 16}
HELDOUT = ((60.0, 45.0), (100.0, 135.0), (80.0, -120.0), (120.0, -45.0))


class OracleReference(Stage):
    """Preprocessing from the truth: frame 0 from the reference camera, its exact mask and
    inverse depth, the object frame as the world (identity transform)."""

    name = "preprocess"

    def __init__(self, job: OracleJob):
        self.job = job

    def step(self, step: int) -> None:
        job = self.job
        size = max(job.config.renderer.size, 64)
        job.set_prep({**job.truth.reference(size), "transform": np.eye(4),
                      "source": job.truth.name, "segmentation": {}})


class OraclePool(PriorPool):
    """The oracle priors by role (nothing to load, nothing to release)."""

    def __init__(self, priors: dict, device):
        super().__init__(None, device)
        self.loaded = priors

    def get(self, role: str, stage: str = "", cuda_graphs: bool = True):
        return self.loaded[role]

    def keep(self, *roles: str) -> None:
        pass


def oracle_pool(truth: GroundTruth, log: RenderLog, options: JobOptions,
                config: Animate124Config, device, vae_factor: int,
                video_match: str = "timed") -> OraclePool:
    return OraclePool(oracle_priors(truth, log, config, device, looping=options.loop,
                                    factor=vae_factor, video_match=video_match), device)


class _Watched:
    """A job whose scene tells the oracles' RenderLog (`self.log`) each render it makes."""

    def scene(self) -> stages.Scene:
        fresh = self._scene is None
        scene = super().scene()
        if fresh:
            scene.watchers.append(self.log)
        return scene


class OracleJob(_Watched, Animate124):
    """An Animate124 job whose priors know `truth`."""

    def __init__(self, truth: GroundTruth, options: JobOptions, config: Animate124Config,
                 device, vae_factor: int, video_match: str = "timed"):
        super().__init__(None, options, config, device=device, random_weights=True)
        self.truth, self.log = truth, RenderLog()
        self.pool = oracle_pool(truth, self.log, options, config, self.device, vae_factor,
                                video_match)
        kept = [s for s in self._stages if s.name not in ("preprocess", "textual_inversion")]
        self._stages = [OracleReference(self), *kept]


def in_mesh_frame(truth: GroundTruth) -> GroundTruth:
    """The truth where mesh mode puts its input, frame 0's mesh: that mesh's box centred, its
    largest half-extent ObjectFrame's; so the input's object frame is the truth's own."""
    return truth.placed(ObjectFrame.of(truth.frames[0], truth.faces).to_object)


def rest_pose(truth: GroundTruth) -> MeshSource:
    """The truth's frame 0 as the artist's mesh: its vertices, faces and colours, world axes."""
    colours = np.rint(np.clip(truth.colours, 0, 1) * 255)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255)], 1).astype(np.uint8)
    return MeshSource(truth.frames[0].copy(), truth.faces, name=truth.name, colors=rgba)


class OracleMeshJob(_Watched, MeshAnimate):
    """A mesh-mode job on the truth's rest pose (`rest_pose`) whose priors know `truth`
    (already `in_mesh_frame`)."""

    def __init__(self, truth: GroundTruth, options: JobOptions, config: Animate124Config,
                 device, vae_factor: int, video_match: str = "timed"):
        self.truth, self.log = truth, RenderLog()
        pool = oracle_pool(truth, self.log, options, config, torch.device(device), vae_factor,
                           video_match)
        super().__init__(rest_pose(truth), options, config, device=device, pool=pool)


@dataclass
class Variant:
    """What one run of the bench changes (`--ab`): a name and config changes."""

    name: str
    changes: dict


AB = {
    # Animate124's mirror keeps clips playing forward; the frames reversed play them
    # backwards (a one-way motion, e.g. `lift`, is then taught both ways).
    "mirror": (Variant("forward", {}), Variant("reversed", {"dynamic.mirror": "reverse"})),
    # Normals of the moving density (Animate124's) against the canonical ones, unrotated.
    "normals": (Variant("world", {"renderer.normals": "world"}),
                Variant("canonical", {"renderer.normals": "canonical"})),
}


def run(source: str, *, size: str = "small", device: str = "cpu", seed: int = 0,
        changes: dict | None = None, log=None, mesh: bool = False,
        frames: int | None = None, video_match: str = "timed") -> dict:
    """One oracle job on `source` (a built-in scene or an .a4d clip) and its scores; `mesh`:
    mesh mode on the truth's rest pose, scored per vertex; `frames`: the clip's length
    (default: the size's); `video_match`: how the video oracle picks its target
    (`priors.VIDEO_MATCH`)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    dev = choose_device(device)
    truth = GroundTruth.load(source).to(dev)
    if mesh:
        truth = in_mesh_frame(truth)
    config = override((MESH_SIZES if mesh else SIZES)[size], changes or {})
    options = JobOptions(prompt=f"the {truth.name} is moving", preset="fast",
                         frames=frames or FRAMES[size], seed=seed, loop=truth.loops)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    job = (OracleMeshJob if mesh else OracleJob)(truth, options, config, dev, VAE_FACTOR[size],
                                                 video_match)
    last = {}

    def progress(stage, step, total):
        if log and (stage, step * 10 // max(total, 1)) != last.get("at"):
            last["at"] = (stage, step * 10 // max(total, 1))
            log(f"{stage} {step}/{total} ({time.perf_counter() - t0:.0f} s)")

    result = run_method(job, progress)
    seconds = time.perf_counter() - t0
    scores = ({**score_vertices(result, truth), **heldout_psnr(job, truth, options.frames),
               "fit": result.metadata["fit"], "export": result.metadata["export"],
               "vertices": result.num_vertices}
              if mesh else score(job, result, truth))
    return {"source": truth.name, "mode": "mesh" if mesh else "image", "size": size,
            "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "loops": truth.loops, "frames": options.frames, "changes": changes or {},
            "video_match": video_match, **scores, "seconds": seconds,
            "peak_bytes": peak_bytes(dev)}


def score_vertices(mesh, truth: GroundTruth) -> dict:
    """Mesh mode's score: per frame, the mean and the largest distance from a result vertex
    to the same truth vertex at that frame's time, as fractions of the truth's diagonal; and
    the same for no motion at all (every frame the input), the bar a learned motion has to
    clear; and the Chamfer distance per frame, as the image job's score."""
    gt = truth.at_frames(len(mesh.frames))
    if mesh.frames.shape != gt.shape:
        raise ValueError(f"the result has {mesh.frames.shape[1]} vertices, the truth "
                         f"{gt.shape[1]}: a per-vertex score needs the same vertices")
    err = np.linalg.norm(mesh.frames.astype(np.float64) - gt, axis=-1) / truth.diagonal
    still = np.linalg.norm(gt[:1] - gt, axis=-1) / truth.diagonal
    # The surface's own error: a motion that slides vertices along the right surface scores
    # well here and badly per vertex.
    chamfer = chamfer_per_frame(mesh, truth)
    return {"chamfer_per_frame": chamfer, "chamfer_mean": float(np.mean(chamfer)),
            "chamfer_max": float(np.max(chamfer)),"vertex_error_per_frame": err.mean(1).tolist(),
            "vertex_error_max_per_frame": err.max(1).tolist(),
            "vertex_error_mean": float(err.mean()), "vertex_error_max": float(err.max()),
            "still_error_mean": float(still.mean()), "still_error_max": float(still.max())}


def chamfer_per_frame(mesh, truth: GroundTruth, points: int = 10_000) -> list[float]:
    """Per frame, the Chamfer distance between the result's surface and the truth's at that
    frame's time, as a fraction of the truth's diagonal."""
    rng = np.random.default_rng(0)
    gt = truth.at_frames(len(mesh.frames))
    out = []
    for k in range(len(mesh.frames)):
        a = metrics.sample_surface(mesh.frames[k], mesh.faces, points, rng)
        b = metrics.sample_surface(gt[k], truth.faces, points, rng)
        out.append(metrics.chamfer_and_normals(a, b, truth.diagonal)[0])
    return out


def score(job: OracleJob, mesh, truth: GroundTruth, points: int = 10_000) -> dict:
    """Chamfer per frame (fraction of the truth's diagonal) and held-out PSNR."""
    chamfer = chamfer_per_frame(mesh, truth, points)
    return {"chamfer_per_frame": chamfer, "chamfer_mean": float(np.mean(chamfer)),
            "chamfer_max": float(np.max(chamfer)), **heldout_psnr(job, truth, len(mesh.frames))}


def heldout_psnr(job, truth: GroundTruth, frames: int) -> dict:
    """PSNR per frame of the job's scene against the truth: albedo, white background, four
    views no SDS step was drawn at on purpose. In mesh mode it is the look the video oracle
    compares (the fitted canonical field moved by the motion), not the exported vertices."""
    scene, size = job.scene(), job.config.renderer.size
    cams = [orbit_camera(p, a, size) for p, a in HELDOUT]
    psnr = []
    with torch.no_grad():
        for k in range(frames):
            out = scene.renderer.render(cams, [k / frames] * len(cams),
                                        shading=Shading(mode="albedo"))
            got = out["rgb"].clamp(0, 1).cpu().numpy()
            want = truth.render_many(cams, [k / frames] * len(cams)).rgb
            want = want.permute(0, 2, 3, 1).cpu().numpy()
            psnr.append(metrics.psnr(got, want))
    return {"psnr_heldout_per_frame": psnr, "psnr_heldout": float(np.mean(psnr))}


def run_ab(source: str, which: str, **kw) -> dict:
    """Both variants of an A/B (`AB`) on the same scene, seed and size."""
    if which not in AB:
        raise ValueError(f"--ab must be one of {', '.join(AB)}")
    common = kw.pop("changes", None) or {}
    return {"ab": which, "runs": {v.name: run(source, changes={**common, **v.changes}, **kw)
                                  for v in AB[which]}}
