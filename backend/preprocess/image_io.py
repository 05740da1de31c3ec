"""Load any common image into float RGBA, with every way it can go wrong named plainly.

Accepted: PNG, JPEG, WebP, TIFF, BMP; RGB(A), grayscale(+alpha), palette (with transparency),
1/8/16-bit and float channels, CMYK; EXIF orientation is applied. Sizes are checked from the
header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animate4d.protocol import limits
from animate4d.protocol.errors import InvalidImageError, LimitExceededError

FORMATS = {"PNG", "JPEG", "WEBP", "TIFF", "BMP", "MPO"}


@dataclass(frozen=True)
class LoadedImage:
    rgba: np.ndarray  # (H, W, 4) float32 in [0, 1], straight (not premultiplied) alpha
    has_alpha: bool  # True when the file carried transparency that is not fully opaque
    source: str
    alpha_from: str = "alpha"  # "mask file" when the alpha came from the artist's --mask

    @property
    def size(self) -> tuple[int, int]:
        return self.rgba.shape[1], self.rgba.shape[0]


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file given on the command line, or a clear error: no such file,
    a folder, over the size limit."""
    p = Path(path)
    if not p.exists():
        raise InvalidImageError(f"{p}: no such file", hint="check the image's path")
    if p.is_dir():
        raise InvalidImageError(f"{p} is a folder, not an image file",
                                hint="give one image file (PNG, JPEG, WebP, TIFF or BMP)")
    size = p.stat().st_size
    if size > limits.MAX_IMAGE_FILE_BYTES:
        raise LimitExceededError(
            f"{p} is {size / 2**20:.0f} MiB; image files are limited to "
            f"{limits.MAX_IMAGE_FILE_BYTES // 2**20} MiB",
            hint="save it as PNG or JPEG at a smaller size",
        )
    return p.read_bytes()


@dataclass(frozen=True)
class ImageFile:
    """An image file's bytes with its name (a job's image on a worker), so that messages
    about it name the file the user sent."""

    data: bytes
    name: str


def load_image(path_or_bytes: str | os.PathLike | bytes | ImageFile) -> LoadedImage:
    if isinstance(path_or_bytes, ImageFile):
        data, source = path_or_bytes.data, path_or_bytes.name
    elif isinstance(path_or_bytes, bytes | bytearray):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        source = str(Path(path_or_bytes))
        data = read_image_file(path_or_bytes)
    im = _open_checked(data, source)
    try:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        im.load()
        rgba = _to_rgba_float(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidImageError(f"{source} is damaged or truncated: {e}") from None
    alpha = rgba[..., 3]
    has_alpha = bool(alpha.min() < 0.999)
    return LoadedImage(rgba=rgba, has_alpha=has_alpha, source=source)


def probe_image(data: bytes, source: str = "the image") -> tuple[str, tuple[int, int]]:
    """Format and size from the header alone, with every limit checked; decodes no pixels."""
    im = _open_checked(data, source)
    return im.format, im.size


def _open_checked(data: bytes, source: str) -> Image.Image:
    if len(data) == 0:
        raise InvalidImageError(f"{source} is empty (0 bytes)")
    if len(data) > limits.MAX_IMAGE_FILE_BYTES:
        raise LimitExceededError(
            f"{source} is {len(data) / 2**20:.0f} MiB; image files are limited to "
            f"{limits.MAX_IMAGE_FILE_BYTES // 2**20} MiB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{source} is not an image that can be read",
            hint="use PNG, JPEG, WebP, TIFF or BMP",
        ) from None
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        raise LimitExceededError(
            f"{source} is far too large{size}; the limit is "
            f"{limits.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels",
            hint="downscale it (1024 px on the long side is plenty)",
        ) from None
    if im.format not in FORMATS:
        raise InvalidImageError(f"{source} is a {im.format} image",
                                hint="use PNG, JPEG, WebP, TIFF or BMP")
    w, h = im.size
    if w * h > limits.MAX_IMAGE_PIXELS:
        raise LimitExceededError(
            f"{source} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
            f"{limits.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels",
            hint="downscale it (1024 px on the long side is plenty)",
        )
    if min(w, h) < limits.MIN_IMAGE_SIDE:
        raise InvalidImageError(
            f"{source} is {w}x{h}; images need at least {limits.MIN_IMAGE_SIDE} px on each side"
        )
    return im


def _to_rgba_float(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        g = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or g.max() > 255 else 255.0
        g = np.clip(g / scale, 0, 1).astype(np.float32)
        return np.dstack([g, g, g, np.ones_like(g)])
    if mode == "F":
        g = np.asarray(im, dtype=np.float32)
        hi = float(g.max()) if g.size else 1.0
        g = np.clip(g / (hi if hi > 1.0 else 1.0), 0, 1)
        return np.dstack([g, g, g, np.ones_like(g)])
    if "transparency" in im.info or mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode != "RGBA":
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.float32) / 255.0
    if a.shape[2] == 3:
        a = np.dstack([a, np.ones(a.shape[:2], np.float32)])
    return np.ascontiguousarray(a)
