"""`animate4d run MESH`: mesh mode in this process (the CLI's `run` hands mesh files here)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from animate4d.protocol import AnimatedMesh, limits
from animate4d.protocol.errors import InvalidRequestError

from .source import MeshSource


def add_arguments(parser) -> None:
    g = parser.add_argument_group("mesh mode (MESH is a .glb, .gltf, .obj, .ply or .a4d)")
    g.add_argument("--pin", metavar="IDS",
                   help="vertex ids that stay still (the root), e.g. 0,5,10-20 or @ids.txt; "
                        "default: the lowest part of the mesh")
    g.add_argument("--up", choices=("y", "z"),
                   help="the up axis of an OBJ or PLY file (default: y for OBJ, z for PLY; "
                        "glTF is always y up, .a4d z up)")


def parse_pin(text: str | None) -> list[int] | None:
    """'0,5,10-20' (or @file with the same, any whitespace) -> vertex ids."""
    if not text:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise InvalidRequestError(f"cannot read the pin file {text[1:]}: {e.strerror}") \
                from None
    ids: list[int] = []
    try:
        for part in text.replace(",", " ").split():
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b) if b else int(a)
            if lo < 0 or hi < lo or hi - lo >= limits.MAX_VERTICES or \
                    len(ids) + hi - lo >= limits.MAX_VERTICES:
                raise ValueError(part)
            ids.extend(range(lo, hi + 1))
    except ValueError as e:
        raise InvalidRequestError(f"--pin takes vertex ids like 0,5,10-20; {e} is not one",
                                  hint="ids are 0-based indices of the input's vertices") \
            from None
    if not ids:
        raise InvalidRequestError("--pin names no vertex", hint="give ids like 0,5,10-20")
    return ids


def in_world(mesh: AnimatedMesh) -> AnimatedMesh:
    """The same clip with the transform applied (for pictures: Z up whatever the input)."""
    t = np.asarray(mesh.transform, np.float64)

    def go(p):
        return (p.astype(np.float64) @ t[:3, :3].T + t[:3, 3]).astype(np.float32)

    return dataclasses.replace(mesh, vertices=go(mesh.vertices), frames=go(mesh.frames),
                               transform=np.eye(4))


def run_mesh_file(args, out: Path) -> int:
    """Mesh mode here: preview's rig on any CPU, or the GPU presets' method (MeshAnimate,
    as a worker runs a mesh job) on --models, with the image jobs' --max-steps and --device."""
    from ..commands.local import gpu_config, job_options, run_fingerprint, run_here
    from .load import load_mesh

    options = job_options(args)
    source = load_mesh(args.image, up=args.up, pin=parse_pin(args.pin))
    resume = None
    if options.preset == "preview":
        from .preview import run_mesh_preview

        def job(progress, checkpoints):
            return run_mesh_preview(source, options, progress)
    else:
        from ..jobs.method import run_method
        from ..jobs.presets import mesh_config, mesh_method_for
        from ..runtime.devices import choose_device

        # Before the output folder: a bad --device or missing models leave none.
        device = choose_device(getattr(args, "device", None))
        method = mesh_method_for(source, options, models=args.models, device=device,
                                 config=gpu_config(options, args, mesh_config))

        def job(progress, checkpoints):
            return run_method(method, progress, checkpoints)

        # The mesh as loaded (a .gltf's buffers may live in other files), up axis and pin.
        resume = run_fingerprint(method, options, *(
            np.ascontiguousarray(a).tobytes() for a in (
                source.vertices, source.faces, source.to_world,
                source.colors if source.colors is not None else np.zeros(0),
                source.pin if source.pin is not None else np.zeros(0))))

    return run_here(job, args, out, describe=_describe, resume=resume, outputs=lambda mesh: {
        "glb": _glb_writer(source, mesh), "preview_mesh": in_world(mesh)})


def _describe(mesh: AnimatedMesh) -> str:
    from ..commands.local import summary

    root = mesh.metadata["root"]
    if not root["vertices"]:  # the GPU presets hold nothing still unless pinned
        return summary(mesh)
    return (f"{summary(mesh)}; root: {'pinned' if root['pinned'] else 'found'}, "
            f"{root['vertices']} vertices")


def _glb_writer(source: MeshSource, mesh: AnimatedMesh):
    if source.gltf is None:
        return None  # the AnimatedMesh's own glTF (export/gltf.py)
    from .preview import gltf_with_motion

    def write(path: Path) -> Path:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(gltf_with_motion(source, mesh))
        os.replace(tmp, path)
        return path

    return write
