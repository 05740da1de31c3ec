"""`animate4d edit` and `animate4d poke`: change a finished result's motion, on any CPU.

The maths is animate4d.protocol.spectrum and .dynamics (the Blender extension runs the same);
this file reads the flags and the .a4d and writes the same three files as `run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from animate4d.protocol import a4d
from animate4d.protocol import dynamics as dyn
from animate4d.protocol import spectrum as spec
from animate4d.protocol.errors import InvalidRequestError


def _numbers(text: str, what: str, count: int | None = None) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or (count is not None and len(values) != count):
        form = ",".join("XYZ"[:count]) if count else "numbers separated by commas"
        raise InvalidRequestError(f"{what} must be {form}, got {text!r}")
    return values


def _bands(texts: list[str] | None) -> dict[int, float]:
    bands = {}
    for text in texts or []:
        for item in text.split(","):
            k, sep, gain = item.partition("=")
            try:
                bands[int(k)] = float(gain)
            except ValueError:
                raise InvalidRequestError(
                    f"--band takes TERM=GAIN (e.g. 1=1.5,3=0), got {item!r}") from None
            if not sep:
                raise InvalidRequestError(f"--band takes TERM=GAIN, got {item!r}")
    return bands


def _weights(path: str | None):
    if path is None:
        return None
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        return np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as e:
        raise InvalidRequestError(f"cannot read the weights in {path}: {e}",
                                  hint="give a .npy array or a text file, one weight per "
                                       "vertex in 0..1") from None


def _write(mesh, args, summary: str) -> int:
    from ..jobs.outputs import write_outputs
    from ..jobs.progress import TerminalProgress, no_progress

    progress = no_progress if args.quiet else TerminalProgress()
    ok = False
    try:
        files = write_outputs(mesh, Path(args.out), preview=not args.no_preview,
                              progress=progress)
        ok = True
    finally:
        if not args.quiet:
            progress.close(ok)
    if not args.quiet:
        print(f"{summary}: {mesh.num_frames} frames at {mesh.fps:g} fps"
              f"{', loops' if spec.is_loop(mesh) else ''}", file=sys.stderr)
    for path in (files.a4d, files.glb, files.preview):
        if path is not None:
            print(path.resolve())
    return 0


def cmd_edit(args) -> int:
    mesh = a4d.load(args.input)
    bands = _bands(args.band)
    if not (args.loop or args.terms is not None or args.amplitude != 1.0 or bands
            or args.weights or args.reverse or args.speed != 1.0 or args.frames is not None
            or args.fps is not None):
        raise InvalidRequestError("nothing to edit", hint="give --loop, --amplitude, --speed, "
                                  "--frames, --fps, --band, --terms or --reverse")
    out = spec.edit(mesh, loop=args.loop, period=args.period, terms=args.terms,
                    amplitude=args.amplitude, bands=bands, weights=_weights(args.weights),
                    reverse_=args.reverse, speed=args.speed, frames=args.frames, fps=args.fps)
    return _write(out, args, "edited")


def cmd_poke(args) -> int:
    mesh = a4d.load(args.input)
    vertices, forces, at = args.vertex or [], args.force or [], args.at or []
    if len(vertices) != len(forces):
        raise InvalidRequestError(f"{len(vertices)} --vertex but {len(forces)} --force: give "
                                  "one force per poked vertex")
    if at and len(at) != len(vertices):
        raise InvalidRequestError(f"{len(at)} --at for {len(vertices)} pokes: give one frame "
                                  "per poke, or none (all at frame 0)")
    pokes = [dyn.Poke(v, tuple(_numbers(f, "--force", 3)), at[i] if at else 0.0)
             for i, (v, f) in enumerate(zip(vertices, forces, strict=True))]
    out = dyn.poke(mesh, pokes, frames=args.frames, fps=args.fps, damping=args.damping,
                   terms=args.terms)
    return _write(out, args, f"{len(pokes)} poke(s)")


def _output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", required=True,
                   help="output folder; result.a4d, result.glb and preview.gif there are "
                        "replaced")
    g.add_argument("--no-preview", action="store_true", help="skip preview.gif")
    g.add_argument("--quiet", action="store_true",
                   help="print only the output paths (and errors)")


def add_parsers(sub) -> None:
    e = sub.add_parser(
        "edit", help="edit a result's motion: loop it, scale it, speed it up, resample it",
        description="Edit the motion of IN (an .a4d result) and write OUT/result.a4d, "
                    "result.glb and preview.gif. The edits apply in this order: --loop, "
                    "--terms, amplitude (--amplitude, --band, --weights), --reverse, then "
                    "time (--speed, --frames, --fps). Each is recorded in the result's "
                    "metadata.",
        epilog="Example: animate4d edit cat/result.a4d --loop --amplitude 1.5 --speed 2 "
               "--out cat-fast/")
    e.add_argument("input", metavar="IN", help="an .a4d result")
    g = e.add_argument_group("loop")
    g.add_argument("--loop", action="store_true",
                   help="make the clip loop seamlessly: choose the period, average its whole "
                        "cycles, blend the seam (a clip that loops already is kept)")
    g.add_argument("--period", type=int, metavar="FRAMES",
                   help="with --loop: the loop's length in frames (default: chosen)")
    g.add_argument("--terms", type=int, metavar="K",
                   help="keep the mean and the K lowest Fourier terms (smoother motion; "
                        "1..16, at most (frames - 1) / 2 of the loop)")
    g = e.add_argument_group("amplitude")
    g.add_argument("--amplitude", type=float, default=1.0,
                   help="scale every displacement from the rest pose, 0..10 (default: 1)")
    g.add_argument("--band", action="append", metavar="TERM=GAIN",
                   help="scale single Fourier terms of a loop, e.g. 1=1.5,3=0 (term k: k "
                        "cycles per clip); may be repeated")
    g.add_argument("--weights", metavar="FILE",
                   help="one weight per vertex in 0..1 (.npy or text): the amplitude edit "
                        "applies fully at 1, not at all at 0 (a vertex group)")
    g.add_argument("--reverse", action="store_true", help="play the motion backwards")
    g = e.add_argument_group("time")
    g.add_argument("--speed", type=float, default=1.0,
                   help="play the motion this many times as fast (0.05..20; default 1). A "
                        "loop keeps whole cycles: without --frames the frame count follows")
    g.add_argument("--frames", type=int,
                   help="frames in the result at the same fps; a loop's speed is rounded to "
                        "whole cycles in them")
    g.add_argument("--fps", type=float,
                   help="playback rate; the motion keeps its speed in seconds (frames are "
                        "resampled)")
    _output_flags(e)
    e.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "poke", help="poke a result and bake how it responds (its motion's modes ringing)",
        description="Poke IN (an .a4d result) at a vertex with a force and write the "
                    "response clip to OUT (result.a4d, result.glb, preview.gif): the rest pose "
                    "moved by the modes of IN's motion (its Fourier terms), each ringing as a "
                    "damped oscillator. --vertex, --force and --at may be repeated, one each "
                    "per poke.",
        epilog="Example: animate4d poke cat/result.a4d --vertex 1200 --force 0,0,-0.05 "
               "--frames 48 --out cat-poked/  (a force starting with a minus: "
               "--force=-0.05,0,0)")
    p.add_argument("input", metavar="IN", help="an .a4d result")
    p.add_argument("--vertex", type=int, action="append", metavar="I",
                   help="the vertex to poke (0-based index)")
    p.add_argument("--force", action="append", metavar="X,Y,Z",
                   help="direction and strength, object frame and units: about the largest "
                        "displacement it causes")
    p.add_argument("--at", type=float, action="append", metavar="FRAME",
                   help="the frame of the response clip at which the poke lands (default 0)")
    p.add_argument("--damping", type=float, default=dyn.DEFAULT_DAMPING,
                   help="damping ratio 0..0.99: how fast the response dies out "
                        "(default: %(default)s)")
    p.add_argument("--terms", type=int, metavar="K",
                   help="modes: the K lowest Fourier terms of the motion (default: all, up to "
                        "16)")
    p.add_argument("--frames", type=int,
                   help="frames of the response clip (default: IN's)")
    p.add_argument("--fps", type=float, help="its playback rate (default: IN's)")
    _output_flags(p)
    p.set_defaults(func=cmd_poke)
