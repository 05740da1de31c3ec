"""`animate4d run` and `animate4d demo`: a job in this process, no server."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from animate4d.protocol import Camera, limits
from animate4d.protocol.errors import InvalidCameraError, InvalidRequestError
from animate4d.protocol.options import MOTION_MODES, PRESETS, JobOptions

from ..runtime.devices import choose_device

DEMO_IMAGE = "panda.png"
DEMO_PROMPT = "a panda is dancing"


def add_job_options(p: argparse.ArgumentParser, *, prompt_required: bool,
                    presets=None) -> None:
    """The job flags shared by `run`, `demo` and `submit`; `presets`: the choices offered
    (default: what this install can run here)."""
    from ..jobs.presets import available

    d = JobOptions()
    g = p.add_argument_group("what to make")
    g.add_argument("--prompt", required=prompt_required, default=DEMO_PROMPT,
                   help="the motion, in words ('a panda is dancing'); in preview mode its words "
                        "pick the motion modes unless --motion is given")
    g.add_argument("--preset", choices=presets or sorted(available()), default=d.preset,
                   help="preview: seconds on a CPU, no model weights (default: %(default)s)")
    g.add_argument("--frames", type=int, default=d.frames,
                   help="frames in the clip (default: %(default)s)")
    g.add_argument("--fps", type=float, default=d.fps,
                   help="playback rate; frame i plays at i/fps seconds (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    g.add_argument("--mask", metavar="FILE",
                   help="the object's mask, the image's size: white = object, black = "
                        "background (or its transparency); default: the image's own "
                        "transparency, else cut out automatically (mask.png in the output "
                        "folder shows the cut)")
    g = p.add_argument_group("motion (preview mode)")
    g.add_argument("--motion", metavar="MODES",
                   help=f"comma-separated modes from {', '.join(MOTION_MODES)}; "
                        "default: chosen from the prompt's words (sway+breathe if none match)")
    g.add_argument("--amplitude", type=float, default=d.amplitude,
                   help="strength of the motion, 0..3 (default: %(default)s)")
    g.add_argument("--speed", type=float, default=d.speed,
                   help="cycles per second, rounded to whole cycles per clip so the clip "
                        "loops exactly (default: %(default)s)")
    g = p.add_argument_group("motion (fast, paper)")
    g.add_argument("--loop", action="store_true",
                   help="learn a motion that loops over the clip: frame F would equal frame 0 "
                        "(preview clips always loop)")
    g.add_argument("--motion-terms", type=int, default=d.motion_terms, metavar="K",
                   help="with --loop: Fourier terms per point, 1..16; fewer is smoother "
                        "(default: %(default)s)")
    g = p.add_argument_group("placement")
    g.add_argument("--camera", metavar="FILE|JSON",
                   help="the reference camera, a JSON file or the JSON itself, in Blender's terms: "
                        '{"matrix_world": 4x4 rows, "resolution": [W, H], "lens": mm or '
                        '"fov": degrees, "sensor_width": 36, "sensor_fit": "AUTO", "shift_x": 0, '
                        '"shift_y": 0}; default: a front view (-Y looking at +Y, Z up), 40 deg')
    g.add_argument("--target", metavar="X,Y,Z",
                   help="world point whose depth the object's centre takes (default: origin)")
    g = p.add_argument_group("preview geometry")
    g.add_argument("--thickness", type=float, default=d.thickness,
                   help="depth of the inflated shape relative to a round one, 0.05..3 "
                        "(default: %(default)s)")
    g.add_argument("--mesh-resolution", type=int, default=d.mesh_resolution,
                   help="grid size of the inflated shape, 32..512; the mesh is then reduced "
                        "to 50,000 faces, so above about 128 it costs time for little detail "
                        "(default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--no-preview", action="store_true", help="skip preview.gif")
    g.add_argument("--quiet", action="store_true",
                   help="print only the output paths (and errors)")


def job_options(args) -> JobOptions:
    camera = None
    if args.camera:
        text = args.camera.strip()
        if not text.startswith("{"):  # a file: cam.json, or @cam.json as curl writes it
            name = text[1:] if text.startswith("@") else text
            try:
                text = Path(name).read_text()
            except OSError as e:
                raise InvalidCameraError(
                    f"--camera {name}: cannot read it ({e.strerror})",
                    hint="give a camera JSON file, or the JSON itself in quotes") from None
        camera = Camera.from_json(text).to_dict()
    target = None
    if args.target:
        try:
            target = [float(x) for x in args.target.split(",")]
        except ValueError:
            raise InvalidRequestError(f"--target must be X,Y,Z numbers, got {args.target!r}") \
                from None
    motion = None
    if args.motion:
        from ..preview.motion import parse_modes

        motion = list(parse_modes(args.motion))
    options = JobOptions(
        prompt=args.prompt, preset=args.preset, frames=args.frames, fps=args.fps,
        seed=args.seed, motion=motion, amplitude=args.amplitude, speed=args.speed,
        loop=args.loop, motion_terms=args.motion_terms,
        camera=camera, target=target, thickness=args.thickness,
        mesh_resolution=args.mesh_resolution,
    )
    try:
        return options.validate()
    except InvalidRequestError as e:  # named as the user typed it: the option's flag
        field = e.message.split(" ", 1)[0]
        if field in JobOptions.__struct_fields__:
            raise InvalidRequestError("--" + field.replace("_", "-") + e.message[len(field):],
                                      hint=e.hint) from None
        raise


def _run_job(image, args, out: Path) -> int:
    from ..jobs.method import run_method

    options = job_options(args)
    device = None
    if options.preset != "preview":  # before the output folder: a bad --device leaves none
        device = choose_device(getattr(args, "device", None))
    method = _method(image_with_mask(image, args), options, args, device)
    resume = None
    if options.preset != "preview":
        raw = image if isinstance(image, bytes) else Path(image).read_bytes()
        mask = Path(args.mask).read_bytes() if getattr(args, "mask", None) else b""
        resume = run_fingerprint(method, options, raw, mask)
    return run_here(lambda progress, checkpoints: run_method(method, progress, checkpoints),
                    args, out, resume=resume)


CHECKPOINTS = ".checkpoints"
"""The folder in --out where a GPU preset's run keeps its checkpoints until its result is
written: the same command run again resumes from them."""


def run_fingerprint(method, options: JobOptions, *inputs: bytes) -> str:
    """What a resumed run must share with the one that left the checkpoints: the inputs'
    bytes, the options and the method's whole config (--max-steps, --static-init included)."""
    import msgspec

    from ..config import as_dict
    from ..jobs.checkpoints import fingerprint

    return fingerprint(*inputs, msgspec.to_builtins(options), as_dict(method.config))


def run_here(job, args, out: Path, *, outputs=None, describe=None,
             resume: str | None = None) -> int:
    """Run `job(progress, checkpoints)` (-> AnimatedMesh) in this process, write its files into
    `out` and print their paths; `outputs(mesh)`: extra keyword arguments of write_outputs (mesh
    mode's own glb and preview placement); `describe(mesh)`: the summary line (default
    `summary`). `resume`: the run's fingerprint (`run_fingerprint`), for a job worth resuming:
    its checkpoints go to OUT/.checkpoints, an earlier run of the same inputs is resumed from
    them, and they are removed once the files are written."""
    from ..jobs.checkpoints import NoCheckpoints, RunCheckpoints
    from ..jobs.outputs import prepare_out_dir, write_outputs
    from ..jobs.progress import TerminalProgress, no_progress

    created = not out.exists()
    prepare_out_dir(out)  # a bad --out fails now, not after the job
    checkpoints = NoCheckpoints()
    if resume is not None:
        checkpoints = RunCheckpoints(out / CHECKPOINTS, resume)
        if checkpoints.holds:
            print_warning(f"resuming from the checkpoints an earlier run of the same inputs "
                          f"left in {out / CHECKPOINTS}")
    progress = no_progress if args.quiet else TerminalProgress()
    t0 = time.perf_counter()
    ok = False
    try:
        mesh = job(progress, checkpoints)
        files = write_outputs(mesh, out, preview=not args.no_preview, progress=progress,
                              warn=print_warning if args.quiet else progress.interject(
                                  print_warning),
                              **(outputs(mesh) if outputs else {}))
        ok = True
    finally:
        if not args.quiet:
            progress.close(ok)
        if resume is not None:
            if ok:
                checkpoints.remove()
            elif checkpoints.holds:
                print_warning(f"its checkpoints are in {out / CHECKPOINTS}: the same command "
                              "resumes from the last one")
            else:
                checkpoints.remove()
        if not ok and created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no empty folder behind
    if not args.quiet:
        print(f"{(describe or summary)(mesh)}; {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    for path in files.paths():
        print(path.resolve())
    return 0


def summary(mesh) -> str:
    """One line about a result, for any method: its size, and how its motion was chosen
    where the method says (preview)."""
    line = (f"{mesh.num_vertices} vertices, {mesh.num_faces} faces, {mesh.num_frames} frames "
            f"at {mesh.fps:g} fps")
    motion = mesh.metadata.get("motion")
    if isinstance(motion, dict) and motion.get("modes"):
        line += f"; motion: {'+'.join(motion['modes'])} ({motion.get('chosen_by', '?')})"
    elif mesh.metadata.get("preset"):
        line += f"; preset {mesh.metadata['preset']}"
    return line


def print_warning(message: str) -> None:
    print(f"animate4d: warning: {message}", file=sys.stderr)


def image_bytes(path: Path, args) -> bytes:
    """The file to send a server: as it is, or re-encoded as RGBA PNG with --mask as alpha."""
    if not getattr(args, "mask", None):
        from ..preprocess.image_io import read_image_file

        return read_image_file(path)
    import io

    import numpy as np
    from PIL import Image

    rgba = image_with_mask(path, args).rgba
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8), "RGBA").save(buf,
                                                                                       "PNG")
    return buf.getvalue()


def image_with_mask(image, args):
    """The image to animate, its alpha replaced by --mask FILE when one is given."""
    if not getattr(args, "mask", None):
        return image
    from ..preprocess.image_io import LoadedImage, load_image
    from ..preprocess.segment import with_mask

    return with_mask(image if isinstance(image, LoadedImage) else load_image(image), args.mask)


def _method(image, options, args, device):
    """The job's Method: the preset's, with the command line's changes to a GPU preset's
    config (`gpu_config`)."""
    from ..jobs.presets import config_for, method_for

    models = getattr(args, "models", None)
    config = gpu_config(options, args, config_for)
    return method_for(image, options, models=models, config=config, device=device)


def gpu_config(options, args, base):
    """A GPU preset's config as the command line asks: `base(preset, models)` (the image or
    the mesh mode's, sizes following tiny random models when those are what --models holds)
    with --max-steps and --static-init applied; None for preview."""
    from ..pipeline.config import scaled

    max_steps = getattr(args, "max_steps", None)
    if max_steps is not None and max_steps < 1:
        raise InvalidRequestError(f"--max-steps must be at least 1, got {max_steps}")
    if options.preset == "preview":
        return None
    return scaled(base(options.preset, getattr(args, "models", None)), max_steps,
                  {"static.init": getattr(args, "static_init", None) or "blob"})


def cmd_run(args) -> int:
    from ..meshmode.load import is_mesh_file

    out = Path(args.out) if args.out else Path(Path(args.image).stem + "_animate4d")
    if is_mesh_file(args.image):
        from ..meshmode.command import run_mesh_file

        return run_mesh_file(args, out)
    return _run_job(args.image, args, out)


def cmd_demo(args) -> int:
    image = resources.files("animate4d.backend").joinpath("examples", DEMO_IMAGE).read_bytes()
    return _run_job(image, args, Path(args.out))


def add_parsers(sub) -> None:
    run = sub.add_parser(
        "run", help="animate an image here, in this process",
        description="Animate IMAGE as PROMPT says; writes OUT/result.a4d, OUT/result.glb and "
                    "OUT/preview.gif and prints their paths, one per line.",
    )
    run.add_argument("image", metavar="IMAGE|MESH",
                     help="PNG, JPEG, WebP, TIFF or BMP, up to "
                          f"{limits.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels; "
                          "a transparent background is used as the "
                          "object's outline, otherwise the object is cut out automatically. "
                          "Or a mesh (.glb, .gltf, .obj, .ply, .a4d): mesh mode animates it, "
                          "keeping its vertices, faces, UVs and materials")
    run.add_argument("--out", metavar="DIR",
                     help="output folder (default: IMAGE's name + '_animate4d'); existing result "
                          "files there are replaced")
    add_job_options(run, prompt_required=True, presets=list(PRESETS))
    from ..meshmode.command import add_arguments as add_mesh_arguments

    add_mesh_arguments(run)
    g = run.add_argument_group("GPU presets (fast, paper)")
    g.add_argument("--models", metavar="DIR",
                   help="folder with one sub-folder per role (default: ANIMATE4D_MODELS, then "
                        "the Hugging Face cache); see `animate4d models`")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help="cap every stage at N steps (smoke runs)")
    g.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    g.add_argument("--static-init", choices=("blob", "proxy"), default="blob",
                   help="start the static stage from the density blob (Animate124) or from "
                        "the preview proxy fitted into the field (default: %(default)s)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="animate the bundled example image (preview mode, a few seconds)",
        description=f"Run preview mode on the bundled example ({DEMO_IMAGE}, "
                    f"'{DEMO_PROMPT}') and print where the files are.",
    )
    demo.add_argument("--out", metavar="DIR", default="animate4d-demo",
                      help="output folder (default: %(default)s)")
    add_job_options(demo, prompt_required=False)
    demo.set_defaults(func=cmd_demo)
