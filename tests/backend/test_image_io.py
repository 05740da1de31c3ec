import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from animate4d.backend.preprocess.image_io import load_image
from animate4d.backend.preprocess.segment import foreground_mask
from animate4d.protocol import limits
from animate4d.protocol.errors import InvalidImageError, LimitExceededError
from tests.conftest import blob_rgba


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _alpha_truth():
    return blob_rgba(120, 140)[..., 3] > 127


def test_png_rgba_8bit_keeps_alpha():
    rgba = blob_rgba(120, 140)
    img = load_image(_save(Image.fromarray(rgba), "PNG"))
    assert img.size == (120, 140) and img.has_alpha
    np.testing.assert_allclose(img.rgba, rgba / 255.0, atol=1e-6)


def test_png_rgba_16bit():
    rgba16 = blob_rgba(120, 140).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba16, cv2.COLOR_RGBA2BGRA))
    img = load_image(buf.tobytes())
    assert img.has_alpha
    assert np.array_equal(img.rgba[..., 3] > 0.5, _alpha_truth())
    np.testing.assert_allclose(img.rgba[..., :3], rgba16[..., :3] / 65535.0, atol=1 / 255)


def test_tiff_16bit_grayscale_keeps_full_precision():
    g = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    ok, buf = cv2.imencode(".tiff", g)
    img = load_image(buf.tobytes())
    assert not img.has_alpha
    np.testing.assert_allclose(img.rgba[..., 0], g / 65535.0, atol=1e-6)
    assert np.array_equal(img.rgba[..., 0], img.rgba[..., 2])


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "BMP"])
def test_rgb_formats(fmt):
    rgb = blob_rgba(120, 140)[..., :3]
    img = load_image(_save(Image.fromarray(rgb), fmt))
    assert img.size == (120, 140) and not img.has_alpha
    assert np.abs(img.rgba[..., :3] - rgb / 255.0).mean() < 0.03


def test_webp_with_alpha():
    img = load_image(_save(Image.fromarray(blob_rgba(120, 140)), "WEBP", lossless=True))
    assert img.has_alpha
    assert np.array_equal(img.rgba[..., 3] > 0.5, _alpha_truth())


def test_grayscale_and_palette_with_transparency():
    rgba = blob_rgba(120, 140)
    gray = load_image(_save(Image.fromarray(rgba[..., 0]), "PNG"))
    assert gray.rgba.shape == (140, 120, 4) and not gray.has_alpha
    pal = Image.fromarray(rgba).quantize(colors=8)  # palette mode with a transparent entry
    assert pal.mode == "P"
    img = load_image(_save(pal, "PNG"))
    assert img.has_alpha
    assert (np.logical_xor(img.rgba[..., 3] > 0.5, _alpha_truth())).mean() < 0.01


def test_exif_orientation_is_applied():
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red, right half blue
    rgb[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img = load_image(_save(Image.fromarray(rgb), "JPEG", exif=exif, quality=95))
    assert img.size == (20, 40)  # portrait once turned
    top, bottom = img.rgba[2, 10, :3], img.rgba[-3, 10, :3]
    assert top[0] > 0.8 and bottom[2] > 0.8  # red ends on top after a clockwise turn


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, error, message",
    [
        (b"", InvalidImageError, "empty"),
        (b"this is a text file, not a picture", InvalidImageError, "not an image"),
        (_png_header_only(30000, 30000), LimitExceededError, "megapixels"),
        (_png_header_only(1, 1), InvalidImageError, "at least 16 px"),
        (_png_header_only(64, 64), InvalidImageError, "damaged or truncated"),
    ],
)
def test_bad_images_are_named(data, error, message):
    with pytest.raises(error, match=message):
        load_image(data)


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="folder"):
        load_image(tmp_path)


def test_file_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    p.write_bytes(_save(Image.fromarray(blob_rgba()), "PNG"))
    monkeypatch.setattr(limits, "MAX_IMAGE_FILE_BYTES", 1000)
    with pytest.raises(LimitExceededError, match="limited to"):
        load_image(p)


@pytest.mark.parametrize("kind", ["transparent", "uniform"])
def test_all_background_has_no_foreground(kind):
    if kind == "transparent":
        data = _save(Image.new("RGBA", (64, 64), (10, 200, 30, 0)), "PNG")
    else:
        data = _save(Image.new("RGB", (64, 64), (200, 200, 200)), "PNG")
    with pytest.raises(InvalidImageError, match="no foreground"):
        foreground_mask(load_image(data))


@pytest.mark.parametrize("background", ["white", "gradient", "noisy"])
def test_grabcut_finds_the_object_without_alpha(background):
    rgba = blob_rgba(300, 360)
    truth = rgba[..., 3] > 127
    h, w = truth.shape
    rng = np.random.default_rng(0)
    if background == "white":
        bg = np.full((h, w, 3), 250.0)
    elif background == "gradient":
        bg = np.dstack([np.linspace(120, 230, w)[None].repeat(h, 0)] * 3)
    else:
        bg = np.clip(rng.normal(180, 12, (h, w, 3)), 0, 255)
    rgb = np.where(truth[..., None], rgba[..., :3], bg).astype(np.uint8)
    img = load_image(_save(Image.fromarray(rgb), "PNG"))
    mask = foreground_mask(img) > 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou >= 0.9, iou


def test_alpha_specks_are_dropped_but_holes_kept():
    rgba = np.zeros((200, 200, 4), np.uint8)
    cv2.circle(rgba, (100, 110), 60, (255, 0, 0, 255), -1)
    cv2.circle(rgba, (100, 110), 20, (0, 0, 0, 0), -1)  # a real hole (a ring)
    rgba[5:8, 190:193] = (0, 255, 0, 255)  # a 3x3 speck of stray alpha in a corner
    mask = foreground_mask(load_image(_save(Image.fromarray(rgba), "PNG"))) > 0.5
    assert not mask[5:8, 190:193].any()
    assert not mask[110, 100]  # the hole stays a hole
    assert mask[110, 50]
