"""Cutting the object out of a photo: the learned segmenter when its role is present, GrabCut
otherwise, the artist's --mask, and the warnings and mask.png every run leaves."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animate4d.backend.preprocess import segment
from animate4d.backend.preprocess.image_io import load_image
from animate4d.protocol import a4d
from animate4d.protocol.errors import InvalidImageError, MissingModelError
from tests.conftest import blob_rgba, write_png

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = Path(skimage_data.__file__).parent
NO_HF_CACHE = "/nonexistent/animate4d-tests/hf-cache"


def animate4d(*args, models=None):
    """The real CLI; no models folder and an empty Hugging Face cache unless `models`."""
    env = {k: v for k, v in os.environ.items() if k != "ANIMATE4D_MODELS"}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": NO_HF_CACHE}
    extra = ["--models", str(models)] if models is not None else []
    return subprocess.run([sys.executable, "-m", "animate4d.backend", *map(str, args), *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def run_photo(photo: Path, out: Path, *flags, models=None):
    return animate4d("run", photo, "--prompt", "it sways", "--frames", 4, "--no-preview",
                     *flags, "--out", out, models=models)


def png_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127


@pytest.mark.parametrize("name, problem", [("camera", "covers only"), ("moon", "covers only"),
                                           ("motorcycle_left", "separate pieces")])
def test_a_photo_grabcut_cuts_badly_warns_naming_the_problem_and_writes_mask_png(
        tmp_path, name, problem):
    out = tmp_path / "out"
    r = run_photo(PHOTOS / f"{name}.png", out)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("animate4d: warning:")]
    assert any(problem in w and "GrabCut" in w and "--mask FILE" in w
               and "models fetch segment" in w for w in warnings), r.stderr
    assert (out / "mask.png").resolve() in [Path(p) for p in r.stdout.split()]
    mesh = a4d.load(out / "result.a4d")
    seg = mesh.metadata["segmentation"]
    assert seg["from"] == "grabcut" and any(problem in w for w in seg["warnings"])
    written = np.asarray(Image.open(out / "mask.png").convert("L"))
    assert written.shape == load_image(PHOTOS / f"{name}.png").rgba.shape[:2]
    assert np.array_equal(written > 127, png_mask(seg["mask_png"]))


def test_with_the_segment_role_present_the_learned_path_runs_end_to_end(tmp_path):
    from animate4d.backend.cli import main
    from animate4d.backend.priors.segmenter import Segmenter

    models = tmp_path / "models"
    assert main(["models", "make-tiny", str(models), "segment"]) == 0
    assert (models / "segment" / "onnx" / "model.onnx").is_file()
    r = animate4d("models", "check", "segment", models=models)
    assert r.returncode == 0 and "segment" in r.stdout and "ok" in r.stdout, r.stdout
    out = tmp_path / "camera"
    r = run_photo(PHOTOS / "camera.png", out, models=models)
    assert r.returncode == 0, r.stderr
    assert "GrabCut" not in r.stderr
    mesh = a4d.load(out / "result.a4d")
    assert mesh.metadata["segmentation"]["from"] == "segmenter"
    assert mesh.metadata["source"]["mask_from"] == "segmenter"
    # mask.png is the segmenter's own answer for the photo (random weights: noise, but exactly
    # the noise the learned path computes), cleaned of specks.
    segmenter = Segmenter(models / "segment")
    rgb = load_image(PHOTOS / "camera.png").rgba[..., :3]
    expected = segmenter(rgb) > 0.5
    got = np.asarray(Image.open(out / "mask.png").convert("L")) > 127
    assert got.shape == expected.shape
    assert (got & ~expected).sum() == 0 and (got == expected).mean() > 0.95
    for name in ("moon", "motorcycle_left"):  # the same path in this process
        image = load_image(PHOTOS / f"{name}.png")
        cut = segment.cut_out(image, models=models)
        assert cut.source == "segmenter"
        assert ((cut.mask > 0.5) <= (segmenter(image.rgba[..., :3]) > 0.5)).all()


def test_the_artists_mask_file_is_the_outline(tmp_path):
    rgba = blob_rgba(300, 360)
    photo = write_png(tmp_path / "photo.png", np.dstack([rgba[..., :3]] * 1))  # no alpha
    mask = write_png(tmp_path / "m.png", np.dstack([rgba[..., 3]] * 3))  # white = object
    out = tmp_path / "out"
    r = run_photo(photo, out, "--mask", mask)
    assert r.returncode == 0, r.stderr
    mesh = a4d.load(out / "result.a4d")
    assert mesh.metadata["segmentation"]["from"] == "mask file"
    written = np.asarray(Image.open(out / "mask.png").convert("L"))
    assert np.array_equal(written > 127, rgba[..., 3] > 127)
    assert "warning" not in r.stderr

    wrong = write_png(tmp_path / "wrong.png", np.zeros((100, 300, 3), np.uint8))
    r = run_photo(photo, tmp_path / "out2", "--mask", wrong)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "wrong.png is 300x100 but the image is 300x360" in r.stderr


def test_warnings_name_each_problem():
    tiny = np.zeros((200, 200), bool)
    tiny[100:108, 100:108] = True
    assert ["covers only 0.2%" in w for w in segment.mask_problems(tiny, "alpha")] == [True]
    pieces = np.zeros((200, 200), bool)
    pieces[20:90, 20:90] = pieces[110:180, 110:180] = True
    (w,) = segment.mask_problems(pieces, "segmenter")
    assert "split into 2 separate pieces" in w and "models fetch" not in w
    full = np.ones((200, 200), bool)
    full[:, :40] = False
    (w,) = segment.mask_problems(full, "grabcut")
    assert "touches 65% of the image border" in w and "models fetch segment" in w
    good = np.zeros((200, 200), bool)
    good[40:160, 60:140] = True
    assert segment.mask_problems(good, "grabcut") == []


def test_a_large_soft_mask_png_fits_the_metadata_limit():
    rng = np.random.default_rng(0)
    noisy = rng.random((2000, 2000)).astype(np.float32)
    data = segment.mask_png(noisy)
    assert len(data) <= segment.MASK_PNG_BYTES
    assert Image.open(io.BytesIO(data)).size[0] < 2000


def test_a_broken_segment_model_is_a_clear_error(tmp_path):
    from animate4d.backend.priors import segmenter

    segmenter.write_tiny(tmp_path / "segment")
    (tmp_path / "segment" / "onnx" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(MissingModelError, match="cannot be loaded") as err:
        segmenter.Segmenter(tmp_path / "segment")
    assert "animate4d models fetch segment" in err.value.hint


def test_no_object_at_all_is_an_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", NO_HF_CACHE)
    flat = np.full((64, 64, 4), 0.5, np.float32)
    flat[..., 3] = 1.0
    from animate4d.backend.preprocess.image_io import LoadedImage

    with pytest.raises(InvalidImageError, match="no foreground object found") as err:
        segment.cut_out(LoadedImage(flat, False, "flat.png"), models=Path("/nonexistent"))
    assert "--mask FILE" in err.value.hint


def test_submit_sends_the_artists_mask_and_fetch_writes_mask_png(cluster, tmp_path):
    cluster.start_server()
    cluster.start_worker()
    rgba = blob_rgba(300, 360)
    photo = write_png(tmp_path / "photo.png", rgba[..., :3].copy())
    mask = write_png(tmp_path / "m.png", np.dstack([rgba[..., 3]] * 3))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "animate4d.backend", "submit", str(photo),
                        "--prompt", "it sways", "--frames", "4", "--mesh-resolution", "64",
                        "--mask", str(mask), "--no-preview", "--out", str(out),
                        "--server", cluster.client_addr, "--timeout", "30"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    written = np.asarray(Image.open(out / "mask.png").convert("L"))
    assert np.array_equal(written > 127, rgba[..., 3] > 127)


def test_models_check_passes_without_the_optional_segment_role(tiny_models, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for role in ("sd", "zero123", "video", "controlnet_tile", "depth"):
        (models / role).symlink_to(tiny_models / role, target_is_directory=True)
    r = animate4d("models", "check", models=models)
    assert r.returncode == 0, r.stdout
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("segment")]
    assert "MISSING" in line and "optional" in line and "GrabCut" in line
    assert "fast, paper" in r.stdout
    r = animate4d("models", "check", "segment", models=models)
    assert r.returncode == 2
