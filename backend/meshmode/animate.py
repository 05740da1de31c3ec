"""The GPU presets' mesh mode (`fast`, `paper`): the artist's own mesh animated by
Animate124's dynamic stage, its vertices kept (after Animate3D), as a Method of the runner.

    canonical  the mesh in the scene's object frame (canonical.py), its colours (colour.py),
               the canonical field fitted to it, and the reference view rendered from it
    dynamic    Animate124's dynamic stage (video SDS on clips, its regularisers) with the
               canonical field frozen (the geometry is the mesh), plus the ARAP energy of the
               mesh's vertices carried by the motion (arap.py) and the pin
    export     each input vertex carried forward through the motion; frame 0 the input

Not run, and why: textual inversion and the static stage (the canonical field is the mesh);
the reference steps and Zero123 (their renders are at time 0, where D(x, 0) = 0, so with the
canonical field frozen no parameter reaches them: they would cost steps and change nothing);
refine (it sharpens the canonical field's look, and here the look is the artist's own,
carried by the vertices). The reference view is still made: the fit's silhouette is checked
against it, and a config that turns the reference steps back on finds its targets there.

The priors come from `pool` (run.PriorPool's `get`/`keep`), so a caller may hand in others.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions

from ..config import as_dict, override
from ..field import use_tensor_cores
from ..field.extract import SUBSTEPS, carry, fill_from_neighbours
from ..jobs.checkpoints import Checkpoints
from ..jobs.method import Method, Stage
from ..jobs.presets import MESH_ROLES
from ..mesh import raster
from ..pipeline import run, stages
from ..pipeline.config import Animate124Config
from ..preprocess.framing import canonical_camera
from ..priors import guidance
from ..runtime import switches
from ..version import versions
from .arap import CONVERGED, ArapTerm
from .canonical import ObjectFrame, fit_to_mesh
from .colour import mesh_colours
from .source import MeshSource, check_frames

# The model roles mesh mode needs: the video prior alone (module docstring).
ROLES = MESH_ROLES
# What mesh mode changes in a GPU preset: the canonical field out of the optimiser, no
# reference steps (module docstring). A motion learning three times faster
# (dynamic.motion_lr_scale 0.3) with mesh.arap 4 scored better on all three scenes of the small
# oracle but is not yet measured at full size, where the defaults' figures were taken
# (docs/BENCHMARKS.md, "Mesh mode on the oracle priors").
MESH_MODE = {"dynamic.canonical_lr_scale": 0.0, "reference.every": 0}
EXPORT_CHUNK = 2**18  # vertices carried at a time
# Refreshes of the occupancy grid after the fit. Each reads one random point per cell, so
# after one the cells the surface only clips read empty about as often as not and the
# renders lose a cell's depth of every edge (the fitted bend's 24-px silhouette: IoU 0.65
# against the mesh's; the SDS stages fill them over their many refreshes, mesh mode's
# frozen canonical field only at its dynamic stage's).
OCCUPANCY_DRAWS = 16


def for_mesh(config: Animate124Config) -> Animate124Config:
    return override(config, MESH_MODE)


def reference_of(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray | None,
                 size: int, device) -> stages.Reference:
    """The mesh (object frame) seen by the canonical camera: rgb on white, mask, and depth
    as the reference losses take it (larger = nearer)."""
    cam = canonical_camera(size)
    rgb = raster.render(vertices, faces, colours, cam).astype(np.float32) / 255.0
    z = raster.depth(vertices, faces, cam)
    mask = np.isfinite(z)  # pixel centres a triangle covers, as the rgb's
    depth = np.where(np.isfinite(z), -z, 0.0).astype(np.float32)
    return stages.Reference(torch.as_tensor(rgb).permute(2, 0, 1).to(device),
                            torch.as_tensor(mask, dtype=torch.float32, device=device),
                            torch.as_tensor(depth, device=device))


def silhouette_iou(scene: stages.Scene, ref: stages.Reference) -> float:
    """IoU of the canonical field's silhouette (alpha > 1/2) and the reference mask."""
    with torch.no_grad():
        _, alpha, _ = scene.render([canonical_camera(ref.mask.shape[-1])], [0.0])
    a, b = alpha[0] > 0.5, ref.mask > 0.5
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def fill_occupancy(scene: stages.Scene) -> None:
    """The occupancy grid of a fitted canonical field, every cell it touches found
    (`OCCUPANCY_DRAWS` refreshes)."""
    for _ in range(OCCUPANCY_DRAWS):
        scene.refresh_occupancy()


class FitCanonical(Stage):
    """The canonical field regressed onto the mesh, then frozen."""

    name = "canonical"

    def __init__(self, job: MeshAnimate):
        self.job = job

    def step(self, step: int) -> None:
        job, cfg = self.job, self.job.config.mesh
        scene = job.scene()
        scene.canonical.requires_grad_(True)
        error = fit_to_mesh(scene.canonical, job.rest, job.source.faces, job.colours,
                            steps=cfg.fit_steps, points=cfg.fit_points,
                            resolution=cfg.occupancy_resolution, edge_cells=cfg.edge_cells,
                            seed=job.options.seed)
        scene.canonical.requires_grad_(False)
        fill_occupancy(scene)
        job.fit = {"error": error, "iou": silhouette_iou(scene, job.ref)}


class MeshDynamic(run.Dynamic):
    """Animate124's dynamic stage on the frozen mesh field, with the ARAP term and the pin."""

    def losses(self, scene):
        job, cfg = self.job, self.job.config
        job.pool.keep("video")
        video = guidance.VideoGuidance(job.pool.get("video", self.name), cfg.guidance.video)
        m = cfg.mesh
        pin = job.source.pin if m.pin > 0 else None
        arap = ArapTerm(job.rest, job.source.faces, scene.device, pin) \
            if m.arap > 0 or m.fold > 0 or pin is not None else None
        gen = torch.Generator().manual_seed(job.options.seed)

        def losses_fn(rng, progress, reference):
            out = stages.dynamic_step(scene, job.ref, cfg, video, None, job.motion_prompt,
                                      rng, progress, reference)
            if arap is not None and not reference:
                terms = arap(scene.motion, gen, m.arap_vertices, m.arap_times)
                out["arap"] = m.arap * terms["arap"]
                out["fold"] = m.fold * terms["fold"]
                if "pin" in terms:
                    out["pin"] = m.pin * terms["pin"]
            return out

        return losses_fn


class CarryVertices(Stage):
    """Frame k: each input vertex where the motion takes it at time k / frames."""

    name = "export"

    def __init__(self, job: MeshAnimate):
        self.job = job
        self.steps = job.options.frames

    def setup(self, start: int) -> None:
        job = self.job
        self.carried = None  # (frame, the object-frame vertices there), for continuation
        job.pool.keep()
        job.scene().refresh_occupancy(run.occupancy_times("export"))
        n = len(job.source.vertices)
        if job.frames is None:
            job.frames = np.empty((self.steps, n, 3), np.float32)
            job.warp = {"warp_residual_max": 0.0, "warp_unconverged_max": 0}

    @torch.no_grad()
    def step(self, step: int) -> None:
        job, src = self.job, self.job.source
        if step == 0:
            job.frames[0] = src.vertices  # exactly the input
            return
        rest = torch.as_tensor(job.rest, dtype=torch.float32, device=job.device)
        # From the last frame's places (from time 0 after a resume: a longer march).
        last, before = self.carried if self.carried is not None else (0, rest)
        substeps = SUBSTEPS * (step - last)
        parts = [carry(job.scene().motion, rest[i : i + EXPORT_CHUNK], step / self.steps,
                       before[i : i + EXPORT_CHUNK], last / self.steps, substeps)
                 for i in range(0, len(rest), EXPORT_CHUNK)]
        carried = torch.cat([p[0] for p in parts])
        self.carried = (step, carried)
        x = carried.double().cpu().numpy()
        residual = torch.cat([p[1] for p in parts]).cpu().numpy()
        bad = residual > CONVERGED
        moved = fill_from_neighbours(job.rest, src.faces, x, bad)
        # object-frame displacement -> world (1 / scale) -> the input's own frame
        back = np.linalg.inv(src.to_world[:3, :3]).T / job.frame.scale
        job.frames[step] = src.vertices + (moved - job.rest) @ back
        job.warp["warp_residual_max"] = max(job.warp["warp_residual_max"],
                                            float(residual.max(initial=0.0)))
        job.warp["warp_unconverged_max"] = max(job.warp["warp_unconverged_max"],
                                               int(bad.sum()))


class MeshAnimate(Method):
    """One GPU mesh-mode job: the source mesh, options, config, priors, scene and stages."""

    name = "mesh_animate"

    def __init__(self, source: MeshSource, options: JobOptions, config: Animate124Config, *,
                 models=None, device=None, random_weights: bool = False, pool=None):
        options.validate()
        check_frames(source, options.frames)
        self.source, self.options, self.config = source, options, config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        use_tensor_cores(self.device)
        if pool is None and not random_weights:
            run.check_models(options.preset, models, ROLES, mode="mesh mode")
        torch.manual_seed(options.seed)
        self.rng = random.Random(options.seed)
        self.pool = pool if pool is not None else run.PriorPool(models, self.device,
                                                               random_weights)
        self.motion_prompt = options.prompt or "an object is moving"
        self.frame = self.rest = self.colours = self.ref = None
        self.fit: dict = {}
        self.frames: np.ndarray | None = None
        self.warp: dict = {}
        self._scene: stages.Scene | None = None
        self._saved_fields: dict | None = None
        self._stages = [FitCanonical(self), MeshDynamic(self), CarryVertices(self)]
        self._prepare()

    @property
    def stages(self):
        return self._stages

    def _prepare(self) -> None:
        """The object frame, the rest vertices in it, their colours, the reference view."""
        src = self.source
        world = src.world_vertices()
        self.frame = ObjectFrame.of(world, src.faces)
        self.rest = self.frame.to_object(world)
        self.colours = mesh_colours(src)
        self.ref = reference_of(self.rest, src.faces, self.colours, self.config.renderer.size,
                                self.device)

    def scene(self) -> stages.Scene:
        if self._scene is None:
            self._scene = run.job_scene(self.config, self.device, self.options,
                                        self._saved_fields)
            self._saved_fields = None
            # Frozen: fitted to the mesh by its own stage, never by the optimiser.
            self._scene.canonical.requires_grad_(False)
        return self._scene

    def resume(self, checkpoints: Checkpoints) -> tuple[str | None, int]:
        fields = checkpoints.get("mesh/fields")
        if fields is None:
            return None, 0
        self._saved_fields = run._torch_load(fields)
        self.fit = self._saved_fields.get("fit", {})
        return self._saved_fields["stage"], self._saved_fields["step"]

    def checkpoint(self, stage: str, step: int) -> dict[str, bytes]:
        if stage not in ("canonical", "dynamic"):
            return {}
        scene = self.scene()
        if not run._finite(scene):
            raise run._diverged(stage, step, "the fields hold non-finite values")
        blob = run._torch_bytes({"canonical": scene.canonical.state_dict(),
                                 "motion": scene.motion.state_dict(), "stage": stage,
                                 "step": step, "fit": self.fit})
        return {"mesh/fields": blob}

    def result(self, timings: dict[str, float]) -> AnimatedMesh:
        src, options = self.source, self.options
        pin = src.pin if src.pin is not None else np.zeros(0)
        return AnimatedMesh(
            vertices=src.vertices.astype(np.float32), faces=src.faces.astype(np.uint32),
            frames=self.frames, fps=options.fps, transform=src.to_world,
            colors=src.colors, uvs=src.uvs,
            metadata={
                "prompt": options.prompt, "preset": options.preset, "seed": options.seed,
                "loop": options.loop,
                "source": {"name": src.name, "kind": "mesh", "vertices": len(src.vertices),
                           "triangles": len(src.faces)},
                "root": {"pinned": src.pin is not None, "vertices": len(pin)},
                "fit": self.fit, "export": self.warp, "versions": versions(),
                "timings": timings, "config": as_dict(self.config),
                "switches": switches.active().record(),
            })
