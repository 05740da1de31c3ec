"""Shared helpers: synthetic images, the glTF validator, and markers for optional tools."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).parent / "tools"


def blob_rgba(w: int = 300, h: int = 360, *, centre=None, scale: float = 1.0) -> np.ndarray:
    """A two-part creature (body + head + one thin arm) on transparency, uint8 RGBA."""
    import cv2

    img = np.zeros((h, w, 4), np.uint8)
    cx, cy = centre if centre is not None else (w // 2, h // 2)
    s = scale * min(w, h) / 300.0
    cv2.ellipse(img, (int(cx), int(cy + 40 * s)), (int(90 * s), int(110 * s)), 0, 0, 360,
                (200, 90, 40, 255), -1)
    cv2.circle(img, (int(cx), int(cy - 80 * s)), int(55 * s), (240, 200, 70, 255), -1)
    cv2.rectangle(img, (int(cx + 80 * s), int(cy)), (int(cx + 130 * s), int(cy + 14 * s)),
                  (60, 120, 200, 255), -1)
    return img


def write_png(path: Path, rgba: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgba, "RGBA" if rgba.shape[2] == 4 else "RGB").save(path)
    return path


@pytest.fixture
def blob_png(tmp_path) -> Path:
    return write_png(tmp_path / "blob.png", blob_rgba())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random models for every role, in the real layouts (written once per session;
    the backend's tests and the benchmarks' share them)."""
    pytest.importorskip("diffusers")
    from animate4d.backend.priors.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models"))


def gltf_validate(path: Path) -> dict:
    """The Khronos validator's report for a .glb (needs `npm ci` in tests/tools)."""
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "gltf-validator").exists():
        pytest.fail("gltf-validator is not installed: run `bash scripts/setup.sh --test`")
    out = subprocess.run(
        [node, str(TOOLS / "validate_gltf.mjs"), str(path)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(out.stdout)
