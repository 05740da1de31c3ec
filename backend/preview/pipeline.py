"""Preview mode end to end: image -> mask -> framing -> inflated mesh -> colours -> motion.

No weights and no GPU; seconds on a CPU. The result has the same form and placement as the GPU
pipeline's, so it is both the artist's first answer and a starting shape for the static stage.

Resumable: the prepared mesh is checkpointed as "base" and the motion in blocks of frames
("frames_00000", ...), so a job moved to another worker continues from the first missing frame.
"""

from __future__ import annotations

import math

import numpy as np

from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.options import JobOptions

from ..checkpoints import Checkpoints, NoCheckpoints, pack_state, unpack_state
from ..geometry import decimate
from ..preprocess import framing
from ..preprocess.image_io import LoadedImage, load_image
from ..preprocess.segment import clean_mask, cut_out
from ..progress import ProgressFn, Stopwatch, no_progress
from ..version import versions
from .colour import project_colours
from .inflate import inflate
from .motion import DEFAULT_MODES, MotionSpec, cycles_for, modes_from_prompt, pose, rig_for

COLOUR_SIZE = 512  # side of the reference view that colours are sampled from
CHECKPOINT_BLOCK_BYTES = 32 * 1024 * 1024


def run_preview(
    image: LoadedImage | str | bytes,
    options: JobOptions,
    progress: ProgressFn = no_progress,
    checkpoints: Checkpoints | None = None,
    *,
    models=None,
) -> AnimatedMesh:
    """`models`: where the optional segment role is looked for (registry.locate's order)."""
    options.validate()
    if checkpoints is None:
        checkpoints = NoCheckpoints()
    clock = Stopwatch()
    saved = checkpoints.get("base")
    base = unpack_state(saved) if saved is not None else _prepare(image, options, progress,
                                                                  clock, models)
    if saved is None:
        checkpoints.put("base", pack_state(**base))

    with clock.stage("motion"):
        frames, modes, chosen_by, cycles = _motion(base, options, progress, checkpoints)

    timings = dict(base["timings"]) | clock.seconds
    return AnimatedMesh(
        vertices=base["vertices"].astype(np.float32),
        faces=base["faces"],
        frames=frames,
        fps=options.fps,
        transform=base["transform"],
        colors=base["colors"],
        metadata={
            "prompt": options.prompt,
            "preset": "preview",
            "seed": options.seed,
            "loop": True,
            "motion": {
                "modes": list(modes), "chosen_by": chosen_by,
                "amplitude": options.amplitude, "cycles": cycles,
                "speed_hz": cycles * options.fps / options.frames,
            },
            "source": base["source"],
            "segmentation": base.get("segmentation", {}),
            "reference_camera": base["camera"],
            "versions": versions(),
            "timings": timings,
        },
    )


def _prepare(image, options: JobOptions, progress: ProgressFn, clock: Stopwatch,
             models=None) -> dict:
    """Load, cut out, frame, inflate and colour: everything up to the motion."""
    with clock.stage("load"):
        progress("load", 0, 1)
        if not isinstance(image, LoadedImage):
            image = load_image(image)
        camera = (
            framing.fit_camera_to_image(Camera.from_dict(options.camera), image.size)
            if options.camera is not None
            else framing.canonical_camera(image.size)
        )
    with clock.stage("segment"):
        progress("segment", 0, 1)
        cutout = cut_out(image, seed=options.seed, models=models)
        mask = cutout.mask
        crop = framing.find_crop(mask)
    with clock.stage("geometry"):
        progress("geometry", 0, 1)
        size = options.mesh_resolution
        view = framing.crop_and_scale(image.rgba, mask, crop, size)
        geo_mask = clean_mask(view[..., 3] > 0.5, keep_fraction=0.02, fill_holes=False)
        vertices, faces = inflate(
            geo_mask, framing.canonical_camera(size), thickness=options.thickness
        )
        vertices, faces = decimate(vertices, faces)  # ~93k faces at the default resolution
    with clock.stage("colour"):
        progress("colour", 0, 1)
        colour_view = framing.crop_and_scale(image.rgba, mask, crop, COLOUR_SIZE)
        colours = project_colours(vertices, framing.canonical_camera(COLOUR_SIZE), colour_view)
        transform = framing.object_to_world(crop, camera, options.target)
    return {
        "vertices": vertices, "faces": faces.astype(np.uint32), "colors": colours,
        "transform": transform, "camera": camera.to_dict(),
        "source": {"name": str(image.source).rsplit("/", 1)[-1], "size": list(image.size),
                   "mask_from": cutout.source},
        "segmentation": cutout.metadata(),
        "timings": dict(clock.seconds),
    }


def _motion(base: dict, options: JobOptions, progress: ProgressFn, checkpoints: Checkpoints):
    if options.motion is not None:
        modes, chosen_by = tuple(options.motion), "options"
    else:
        modes, chosen_by = modes_from_prompt(options.prompt), "prompt"
        if not modes:
            modes, chosen_by = DEFAULT_MODES, "default"
    cycles = cycles_for(options.speed, options.frames, options.fps)
    spec = MotionSpec(modes=modes, amplitude=options.amplitude, cycles=cycles)
    v = base["vertices"].astype(np.float64)
    rig = rig_for(v)
    n_frames = options.frames
    block = max(1, min(math.ceil(n_frames / 8), CHECKPOINT_BLOCK_BYTES // (len(v) * 12)))
    frames = np.empty((n_frames, len(v), 3), np.float32)
    start = 0
    while start < n_frames:  # blocks already made by an earlier attempt
        saved = checkpoints.get(f"frames_{start:05d}")
        if saved is None:
            break
        part = unpack_state(saved)["frames"]
        frames[start : start + len(part)] = part
        start += len(part)
    for b0 in range(start, n_frames, block):
        b1 = min(n_frames, b0 + block)
        for k in range(b0, b1):
            progress("motion", k, n_frames)
            frames[k] = pose(v, spec, k / n_frames, rig)
        checkpoints.put(f"frames_{b0:05d}", pack_state(frames=frames[b0:b1]))
    progress("motion", n_frames, n_frames)
    return frames, modes, chosen_by, cycles
