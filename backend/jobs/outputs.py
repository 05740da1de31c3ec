"""The files a finished job leaves in its output folder, written the same way by every caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from animate4d.protocol import AnimatedMesh, a4d
from animate4d.protocol.errors import Animate4DError

from ..export.gltf import write_glb
from ..export.preview_media import preview_frames, write_gif
from .progress import ProgressFn, no_progress


@dataclass(frozen=True)
class OutputFiles:
    a4d: Path
    glb: Path
    preview: Path | None


def prepare_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise Animate4DError(f"{out} exists and is not a folder", hint="choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Animate4DError(f"cannot create the output folder {out}: {e.strerror}") from None
    return out


def write_outputs(
    mesh: AnimatedMesh, out: str | Path, *, preview: bool = True,
    progress: ProgressFn = no_progress, glb: Callable[[Path], Path] | None = None,
    preview_mesh: AnimatedMesh | None = None,
) -> OutputFiles:
    """result.a4d (the exact result), result.glb (for any 3D tool), preview.gif (to glance at).
    `glb` writes the .glb instead (mesh mode gives the artist's own glTF back); the GIF shows
    `preview_mesh` when given (the same motion, placed for the camera)."""
    out = prepare_out_dir(out)
    progress("export", 0, 2)
    a4d_path = a4d.save(mesh, out / "result.a4d")
    progress("export", 1, 2)
    glb_path = glb(out / "result.glb") if glb is not None else write_glb(mesh, out / "result.glb")
    progress("export", 2, 2)
    gif_path = None
    if preview:
        gif_path = write_gif(preview_frames(preview_mesh or mesh, progress), mesh.fps,
                             out / "preview.gif")
    return OutputFiles(a4d=a4d_path, glb=glb_path, preview=gif_path)
