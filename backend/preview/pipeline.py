"""Preview mode end to end: image -> mask -> framing -> inflated mesh -> colours -> motion.

No weights and no GPU; seconds on a CPU. The result has the same form and placement as the GPU
pipeline's, so it is both the artist's first answer and a starting shape for the static stage.
"""

from __future__ import annotations

import numpy as np

from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.options import JobOptions

from ..preprocess import framing
from ..preprocess.image_io import LoadedImage, load_image
from ..preprocess.segment import clean_mask, foreground_mask
from ..progress import ProgressFn, Stopwatch, no_progress
from ..version import versions
from .colour import project_colours
from .inflate import inflate
from .motion import DEFAULT_MODES, MotionSpec, animate, cycles_for, modes_from_prompt

COLOUR_SIZE = 512  # side of the reference view that colours are sampled from


def run_preview(
    image: LoadedImage | str | bytes, options: JobOptions, progress: ProgressFn = no_progress
) -> AnimatedMesh:
    options.validate()
    clock = Stopwatch()
    steps = 6

    with clock.stage("load"):
        progress("load", 0, steps)
        if not isinstance(image, LoadedImage):
            image = load_image(image)
        camera = (
            framing.fit_camera_to_image(Camera.from_dict(options.camera), image.size)
            if options.camera is not None
            else framing.canonical_camera(image.size)
        )

    with clock.stage("segment"):
        progress("segment", 1, steps)
        mask = foreground_mask(image, seed=options.seed)
        crop = framing.find_crop(mask)

    with clock.stage("geometry"):
        progress("geometry", 2, steps)
        size = options.mesh_resolution
        view = framing.crop_and_scale(image.rgba, mask, crop, size)
        geo_mask = clean_mask(view[..., 3] > 0.5, keep_fraction=0.02, fill_holes=False)
        vertices, faces = inflate(
            geo_mask, framing.canonical_camera(size), thickness=options.thickness
        )

    with clock.stage("colour"):
        progress("colour", 3, steps)
        colour_view = framing.crop_and_scale(image.rgba, mask, crop, COLOUR_SIZE)
        colours = project_colours(vertices, framing.canonical_camera(COLOUR_SIZE), colour_view)

    with clock.stage("motion"):
        progress("motion", 4, steps)
        if options.motion is not None:
            modes, chosen_by = tuple(options.motion), "options"
        else:
            modes, chosen_by = modes_from_prompt(options.prompt), "prompt"
            if not modes:
                modes, chosen_by = DEFAULT_MODES, "default"
        cycles = cycles_for(options.speed, options.frames, options.fps)
        spec = MotionSpec(modes=modes, amplitude=options.amplitude, cycles=cycles)
        frames = animate(vertices, spec, options.frames)
        transform = framing.object_to_world(crop, camera, options.target)

    progress("motion", 5, steps)
    return AnimatedMesh(
        vertices=vertices.astype(np.float32),
        faces=faces,
        frames=frames,
        fps=options.fps,
        transform=transform,
        colors=colours,
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
            "source": {"name": str(image.source).rsplit("/", 1)[-1], "size": list(image.size),
                       "mask_from": "alpha" if image.has_alpha else "grabcut"},
            "reference_camera": camera.to_dict(),
            "versions": versions(),
            "timings": clock.seconds,
        },
    )
