"""Preview mesh mode: the artist's own mesh moved by image preview's motions, on any CPU.

The motions (sway, bounce, breathe, twist, nod; backend/preview/motion.py) run in Blender's
world axes, rooted where weights.py finds or is told the root is, each vertex taking the share
of the motion that weights.py computes through the mesh's volume. Each frame's displacement is
taken back to the input's own frame, so the result keeps the input's vertices (frame 0 is
them, bit for bit), faces, UVs and order; the clip loops exactly (whole cycles per clip).
"""

from __future__ import annotations

import numpy as np

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions

from ..jobs.progress import ProgressFn, Stopwatch, no_progress
from ..preview.motion import describe, pose, spec_for
from ..version import versions
from .source import MeshSource, check_frames
from .weights import bend_weights, rig_of, root_mask


def run_mesh_preview(source: MeshSource, options: JobOptions,
                     progress: ProgressFn = no_progress) -> AnimatedMesh:
    options.validate()
    check_frames(source, options.frames)
    clock = Stopwatch()
    with clock.stage("rig"):
        progress("rig", 0, 1)
        world = source.world_vertices()
        pinned = source.pin is not None
        root = root_mask(world, source.pin)
        rig = rig_of(world, root, pinned)
        weights = bend_weights(world, source.faces, root)
    with clock.stage("motion"):
        spec, chosen_by = spec_for(options)
        frames = np.empty((options.frames, len(world), 3), np.float32)
        back = np.linalg.inv(source.to_world[:3, :3]).T  # world displacement -> input frame
        for k in range(options.frames):
            progress("motion", k, options.frames)
            moved = pose(world, spec, k / options.frames, rig, weights)
            frames[k] = source.vertices + (moved - world) @ back
        frames[0] = source.vertices  # exactly the input, whatever the rounding above
        progress("motion", options.frames, options.frames)
    return AnimatedMesh(
        vertices=source.vertices.astype(np.float32),
        faces=source.faces.astype(np.uint32),
        frames=frames,
        fps=options.fps,
        transform=source.to_world,
        colors=source.colors,
        uvs=source.uvs,
        metadata={
            "prompt": options.prompt,
            "preset": "preview",
            "seed": options.seed,
            "loop": True,
            "motion": describe(spec, chosen_by, options),
            "source": {"name": source.name, "kind": "mesh", "vertices": len(world),
                       "triangles": len(source.faces)},
            "root": {"pinned": pinned, "vertices": int(root.sum())},
            "versions": versions(),
            "timings": clock.seconds,
        },
    )


def gltf_with_motion(source: MeshSource, mesh: AnimatedMesh) -> bytes:
    """The input glTF back as a .glb with the clip as morph targets (source.gltf required)."""
    offsets = mesh.frames - mesh.vertices  # float32, as glTF stores them
    return source.gltf.with_morph_targets(offsets, mesh.fps, bool(mesh.metadata.get("loop")))
