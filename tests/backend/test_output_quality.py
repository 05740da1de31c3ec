"""What an artist sees of a result: a preview GIF without pinholes that keeps the whole motion
in view, meshes without duplicate faces, and warnings before outputs that will not travel."""

import io
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

from animate4d.backend.export.preview_media import PANEL, preview_frames
from animate4d.backend.jobs import outputs
from animate4d.backend.mesh.geometry import drop_duplicate_faces
from animate4d.backend.mesh.raster import iou, render, silhouette
from animate4d.backend.preview.pipeline import run_preview
from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.options import JobOptions
from tests.conftest import blob_rgba, write_png

PANDA = resources.files("animate4d.backend").joinpath("examples", "panda.png").read_bytes()


def panels(frame: np.ndarray) -> list[np.ndarray]:
    return [frame[:, :PANEL], frame[:, PANEL:]]


def enclosed_background(panel: np.ndarray) -> int:
    """Background pixels not connected (8-way) to the panel's edge: holes in the object."""
    labels, _ = ndimage.label((panel == 255).all(axis=2), structure=np.ones((3, 3)))
    outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return int(((labels > 0) & ~np.isin(labels, outside)).sum())


def test_the_preview_shows_no_pinholes_from_any_side():
    mesh = run_preview(PANDA, JobOptions(prompt="a panda is dancing", frames=8))
    holes = [enclosed_background(p) for fr in preview_frames(mesh) for p in panels(fr)]
    assert holes == [0] * 16, holes


def test_a_coarse_closed_mesh_renders_solid():
    """Triangles many pixels wide: the image covers what the exact silhouette covers."""
    sphere = trimesh.creation.icosphere(subdivisions=1)
    cam = Camera.look_at((0.3, -3.0, 0.8), (0, 0, 0), fov_deg=40, resolution=(128, 128))
    img = render(sphere.vertices, sphere.faces, None, cam)
    drawn = ~(img == 255).all(axis=2)
    assert enclosed_background(img) == 0
    assert iou(drawn, silhouette(sphere.vertices, sphere.faces, cam)) > 0.97


def test_the_nearest_surface_wins_every_pixel():
    """Two parallel squares: the far one (white) never shows through the near one (black)."""
    sq = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], float)
    verts = np.concatenate([sq, sq + (0, 0.5, 0)])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    colors = np.array([[0, 0, 0]] * 4 + [[255, 255, 255]] * 4, np.uint8)
    cam = Camera.look_at((0, -4.0, 0), (0, 0, 0), fov_deg=40, resolution=(96, 96))
    img = render(verts, faces, colors, cam).astype(int).sum(axis=2)
    near = ndimage.binary_erosion(silhouette(verts[:4], faces[:2], cam), iterations=1)
    assert near.sum() > 1000 and img[near].max() == 0


def test_the_turntable_keeps_a_strong_motion_in_frame():
    mesh = run_preview(PANDA, JobOptions(prompt="a panda is dancing", frames=12, amplitude=2.0,
                                         mesh_resolution=64))
    touching = []
    for k, fr in enumerate(preview_frames(mesh)):
        for side, p in enumerate(panels(fr)):
            edge = np.concatenate([p[0], p[-1], p[:, 0], p[:, -1]])
            if (edge != 255).any():
                touching.append((k, side))
    assert touching == []


def test_back_to_back_twins_and_repeats_are_dropped():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v, f = sphere.vertices, sphere.faces
    extra = np.array([f[0][::-1], f[5], [1, 1, 2]])
    v2, f2 = drop_duplicate_faces(v, np.concatenate([f, extra]))
    assert len(f2) == len(f) - 1  # f0 and its twin gone, f5 once, the degenerate face gone
    assert len(np.unique(np.sort(f2, axis=1), axis=0)) == len(f2)
    edges = np.sort(np.concatenate([f2[:, [0, 1]], f2[:, [1, 2]], f2[:, [2, 0]]]), axis=1)
    assert np.unique(edges, axis=0, return_counts=True)[1].max() == 2  # no edge of 3+ faces
    v3, f3 = drop_duplicate_faces(v, np.concatenate([f, f[3:4]]))
    assert np.array_equal(f3, f) and np.array_equal(v3, v)


def test_a_logo_whose_decimation_folded_twins_has_no_duplicate_faces(monkeypatch):
    """scikit-image's logo: decimating its preview mesh used to leave 7 back-to-back pairs."""
    skimage_data = pytest.importorskip("skimage.data")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/animate4d-tests/hf-cache")
    logo = Path(skimage_data.__file__).parent / "logo.png"
    mesh = run_preview(str(logo), JobOptions(frames=2), models=Path("/nonexistent"))
    faces = np.sort(mesh.faces.astype(np.int64), axis=1)
    assert len(np.unique(faces, axis=0)) == len(faces)


def small_mesh(frames: int) -> AnimatedMesh:
    sphere = trimesh.creation.icosphere(subdivisions=1)
    v = sphere.vertices.astype(np.float32)
    return AnimatedMesh(vertices=v, faces=sphere.faces.astype(np.uint32),
                        frames=np.repeat(v[None], frames, axis=0), fps=24.0)


def test_size_estimates_match_the_files(tmp_path):
    mesh = run_preview(PANDA, JobOptions(frames=6, mesh_resolution=64))
    files = outputs.write_outputs(mesh, tmp_path)
    for name, estimate in outputs.estimated_bytes(mesh, preview=False).items():
        actual = (tmp_path / name).stat().st_size
        assert 0.9 < estimate / actual < 1.1, (name, estimate, actual)
    assert files.mask is not None and files.mask.name == "mask.png"


def test_large_outputs_are_announced_before_anything_is_written(tmp_path, monkeypatch):
    mesh = small_mesh(10)
    heard = []

    def warn(message):
        heard.append((message, sorted(p.name for p in tmp_path.iterdir())))

    monkeypatch.setattr(outputs, "LARGE_OUTPUT_BYTES", 10_000)
    outputs.write_outputs(mesh, tmp_path, preview=False, warn=warn)
    (message, seen), = heard
    assert seen == [] and "writing about" in message and "result.glb ~" in message
    assert "--frames" in message


def test_glb_above_256_frames_warns_with_the_alembic_alternative(tmp_path):
    png = write_png(tmp_path / "b.png", blob_rgba(120, 140))
    r = subprocess.run([sys.executable, "-m", "animate4d.backend", "run", str(png), "--prompt",
                        "x", "--frames", "300", "--mesh-resolution", "32", "--no-preview",
                        "--quiet", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "morph targets" in ln]
    assert line.startswith("animate4d: warning:") and "300" in line and "Alembic" in line
    r = subprocess.run([sys.executable, "-m", "animate4d.backend", "run", str(png), "--prompt",
                        "x", "--frames", "256", "--mesh-resolution", "32", "--no-preview",
                        "--quiet", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "morph targets" not in r.stderr, r.stderr
    assert Image.open(io.BytesIO((tmp_path / "o" / "mask.png").read_bytes())).size == (120, 140)
