"""The files a finished job leaves in its output folder, written the same way by every caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from animate4d.protocol import AnimatedMesh, a4d
from animate4d.protocol.errors import Animate4DError

from ..export.gltf import write_glb
from ..export.preview_media import PANEL, preview_frames, write_gif
from .progress import ProgressFn, no_progress

# glTF viewers built on three.js or Filament handle at most this many morph targets.
GLB_MORPH_TARGETS = 256
# Outputs above this, all files together, are announced before they are written.
LARGE_OUTPUT_BYTES = 256 * 2**20

WarnFn = Callable[[str], None]


def no_warnings(message: str) -> None:
    pass


@dataclass(frozen=True)
class OutputFiles:
    a4d: Path
    glb: Path
    preview: Path | None
    mask: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.a4d, self.glb, self.preview, self.mask) if p is not None]


def estimated_bytes(mesh: AnimatedMesh, *, preview: bool = True) -> dict[str, int]:
    """About what each file will take: the frames dominate (float32 positions in .a4d;
    position and normal offsets per morph target in .glb; a GIF frame compresses to about a
    third of its pixels)."""
    v, f, n = mesh.num_vertices, mesh.num_faces, mesh.num_frames
    out = {"result.a4d": 12 * v * (n + 1) + 12 * f,
           "result.glb": 24 * v * (n + 1) + 12 * f + 4 * n * (n + 1)}
    if preview:
        out["preview.gif"] = n * 2 * PANEL * PANEL // 3
    return out


def segmentation_warnings(mesh: AnimatedMesh) -> list[str]:
    return list(mesh.metadata.get("segmentation", {}).get("warnings", []))


def output_warnings(mesh: AnimatedMesh, *, preview: bool = True) -> list[str]:
    """What an artist should know before these files are written."""
    out = []
    n = mesh.num_frames
    if n > GLB_MORPH_TARGETS:
        out.append(f"result.glb will have {n} morph targets (one per frame): three.js, "
                   f"Filament and other glTF viewers handle at most {GLB_MORPH_TARGETS}. "
                   f"Blender imports it, or use result.a4d there; for other tools export "
                   f"Alembic (.abc) from Blender (the add-on's Export), or make the clip "
                   f"{GLB_MORPH_TARGETS} frames or fewer")
    sizes = estimated_bytes(mesh, preview=preview)
    total = sum(sizes.values())
    if total > LARGE_OUTPUT_BYTES:
        each = ", ".join(f"{name} ~{b / 1e6:.0f} MB" for name, b in sizes.items())
        out.append(f"writing about {total / 1e6:.0f} MB ({each}) for {n} frames x "
                   f"{mesh.num_vertices} vertices; fewer --frames or a lower "
                   f"--mesh-resolution make them smaller" +
                   (", --no-preview skips the GIF" if preview else ""))
    return out


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
    preview_mesh: AnimatedMesh | None = None, warn: WarnFn = no_warnings,
) -> OutputFiles:
    """result.a4d (the exact result), result.glb (for any 3D tool), preview.gif (to glance at)
    and mask.png (the object's mask, when the result says how it was cut out). `glb` writes
    the .glb instead (mesh mode gives the artist's own glTF back); the GIF shows
    `preview_mesh` when given (the same motion, placed for the camera). `warn` hears the
    segmentation's warnings and the outputs' (`output_warnings`) before anything is written."""
    for message in segmentation_warnings(mesh) + output_warnings(mesh, preview=preview):
        warn(message)
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
    mask_path = None
    png = mesh.metadata.get("segmentation", {}).get("mask_png")
    if isinstance(png, bytes | bytearray):
        mask_path = out / "mask.png"
        tmp = mask_path.with_name("mask.png.tmp")
        tmp.write_bytes(png)
        tmp.replace(mask_path)
    elif (out / "mask.png").is_file():  # an earlier result's, which would mislead
        (out / "mask.png").unlink()
    return OutputFiles(a4d=a4d_path, glb=glb_path, preview=gif_path, mask=mask_path)
