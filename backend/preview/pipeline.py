"""Preview mode end to end: image -> mask -> framing -> inflated mesh -> colours -> motion.

No weights and no GPU; seconds on a CPU. The result has the same form and placement as the GPU
pipeline's, so it is both the artist's first answer and a starting shape for the static stage.

Resumable: the prepared mesh is checkpointed as "base" and the motion in blocks of frames
("frames_00000", ...), so a job moved to another worker continues from the first missing frame.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.options import JobOptions

from ..jobs.checkpoints import Checkpoints, pack_state, unpack_state
from ..jobs.method import Method, Stage, run_method
from ..jobs.progress import ProgressFn, no_progress
from ..mesh.geometry import decimate
from ..preprocess import framing
from ..preprocess.image_io import LoadedImage, load_image
from ..preprocess.segment import clean_mask, cut_out
from ..runtime import switches
from ..version import versions
from .colour import project_colours
from .inflate import inflate
from .motion import describe, pose, rig_for, spec_for

COLOUR_SIZE = 512  # side of the reference view that colours are sampled from
CHECKPOINT_BLOCK_BYTES = 32 * 1024 * 1024


class _Prepare(Stage):
    """One step of getting the mesh ready (load, segment, geometry, colour)."""

    def __init__(self, job: Preview, name: str, work):
        self.job, self.name, self.work = job, name, work

    def step(self, step: int) -> None:
        self.work()


class _Motion(Stage):
    """The clip, one frame per step, checkpointed in blocks of frames."""

    name = "motion"

    def __init__(self, job: Preview):
        self.job = job
        self.steps = job.options.frames

    def setup(self, start: int) -> None:
        job = self.job
        v = job.base["vertices"].astype(np.float64)
        self.checkpoint_every = max(1, min(math.ceil(self.steps / 8),
                                           CHECKPOINT_BLOCK_BYTES // (len(v) * 12)))
        self.vertices, self.rig = v, rig_for(v)
        if job.frames is None:
            job.frames = np.empty((self.steps, len(v), 3), np.float32)

    def step(self, step: int) -> None:
        job = self.job
        job.frames[step] = pose(self.vertices, job.spec, step / self.steps, self.rig)


class Preview(Method):
    """Preview mode as stages: load, segment, geometry, colour (checkpointed together as
    "base"), then the motion frame by frame."""

    name = "preview"

    def __init__(self, image: LoadedImage | str | bytes, options: JobOptions, models=None):
        """`models`: where the optional segment role is looked for (registry.locate's order)."""
        options.validate()
        self.image, self.options, self.models = image, options, models
        self.base: dict | None = None
        self.frames: np.ndarray | None = None
        self.saved_upto = 0
        self.loaded = self.camera = self.mask = self.crop = None
        self.vertices = self.faces = None
        self.spec, self.chosen_by = spec_for(options)
        self._stages = [_Prepare(self, "load", self._load),
                        _Prepare(self, "segment", self._segment),
                        _Prepare(self, "geometry", self._geometry),
                        _Prepare(self, "colour", self._colour), _Motion(self)]

    @property
    def stages(self):
        return self._stages

    def _load(self) -> None:
        image, options = self.image, self.options
        self.loaded = image if isinstance(image, LoadedImage) else load_image(image)
        self.camera = (
            framing.fit_camera_to_image(Camera.from_dict(options.camera), self.loaded.size)
            if options.camera is not None
            else framing.canonical_camera(self.loaded.size)
        )

    def _segment(self) -> None:
        self.cutout = cut_out(self.loaded, seed=self.options.seed, models=self.models)
        self.mask = self.cutout.mask
        self.crop = framing.find_crop(self.mask)

    def _geometry(self) -> None:
        size = self.options.mesh_resolution
        view = framing.crop_and_scale(self.loaded.rgba, self.mask, self.crop, size)
        geo_mask = clean_mask(view[..., 3] > 0.5, keep_fraction=0.02, fill_holes=False)
        vertices, faces = inflate(
            geo_mask, framing.canonical_camera(size), thickness=self.options.thickness
        )
        self.vertices, self.faces = decimate(vertices, faces)  # ~93k faces by default

    def _colour(self) -> None:
        image, vertices = self.loaded, self.vertices
        colour_view = framing.crop_and_scale(image.rgba, self.mask, self.crop, COLOUR_SIZE)
        colours = project_colours(vertices, framing.canonical_camera(COLOUR_SIZE), colour_view)
        transform = framing.object_to_world(self.crop, self.camera, self.options.target)
        self.base = {
            "vertices": vertices, "faces": self.faces.astype(np.uint32), "colors": colours,
            "transform": transform, "camera": self.camera.to_dict(),
            "source": {"name": str(image.source).rsplit("/", 1)[-1], "size": list(image.size),
                       "mask_from": self.cutout.source},
            "segmentation": self.cutout.metadata(),
            "timings": {},
        }

    def resume(self, checkpoints: Checkpoints) -> tuple[str | None, int]:
        saved = checkpoints.get("base")
        if saved is None:
            return None, 0
        self.base = unpack_state(saved)
        n, start = self.options.frames, 0
        self.frames = np.empty((n, len(self.base["vertices"]), 3), np.float32)
        while start < n:  # blocks already made by an earlier attempt
            block = checkpoints.get(f"frames_{start:05d}")
            if block is None:
                break
            part = unpack_state(block)["frames"]
            if not len(part):
                break  # an empty block says nothing more: the frames from here are made again
            self.frames[start : start + len(part)] = part
            start += len(part)
        self.saved_upto = start
        return "motion", start

    def checkpoint(self, stage: str, step: int) -> dict[str, bytes]:
        if stage == "colour":
            return {"base": pack_state(**self.base)}
        if stage == "motion":
            if step <= self.saved_upto:
                return {}
            b0, self.saved_upto = self.saved_upto, step
            return {f"frames_{b0:05d}": pack_state(frames=self.frames[b0:step])}
        return {}

    def result(self, timings: dict[str, float]) -> AnimatedMesh:
        base, options = self.base, self.options
        return AnimatedMesh(
            vertices=base["vertices"].astype(np.float32),
            faces=base["faces"],
            frames=self.frames,
            fps=options.fps,
            transform=base["transform"],
            colors=base["colors"],
            metadata={
                "prompt": options.prompt,
                "preset": "preview",
                "seed": options.seed,
                "loop": True,
                "motion": describe(self.spec, self.chosen_by, options),
                "source": base["source"],
                "segmentation": base.get("segmentation", {}),
                "reference_camera": base["camera"],
                "versions": versions(),
                "timings": dict(base["timings"]) | timings,
                "config": msgspec.structs.asdict(options),
                "switches": switches.active().record(),
            },
        )


def run_preview(
    image: LoadedImage | str | bytes,
    options: JobOptions,
    progress: ProgressFn = no_progress,
    checkpoints: Checkpoints | None = None,
    *,
    models=None,
) -> AnimatedMesh:
    """One preview job, run by the stage runner."""
    return run_method(Preview(image, options, models), progress, checkpoints)
