"""The `segment` role: a learned background remover (BiRefNet-lite, ONNX) run with onnxruntime.

The folder holds the Hugging Face ONNX layout: `preprocessor_config.json` (input size, mean,
std) and `onnx/model.onnx` (one input, an RGB batch normalised as the config says; one output,
foreground logits at the input size). It runs once per job, on the CPU: a second at most for
the lite model, and no GPU memory taken from the stages.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from animate4d.protocol.errors import MissingModelError

from . import registry

ROLE = "segment"
MODEL_FILE = "onnx/model.onnx"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter:
    """`segmenter(rgb)`: (H, W) float32 foreground probability for an (H, W, 3) image in
    [0, 1]."""

    def __init__(self, folder: Path | str):
        import onnxruntime

        self.folder = Path(folder)
        cfg = json.loads((self.folder / "preprocessor_config.json").read_text())
        size = cfg.get("size", {})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        self.height = int(size.get("height", size.get("shortest_edge", 1024)))
        self.width = int(size.get("width", size.get("shortest_edge", 1024)))
        self.mean = np.asarray(cfg.get("image_mean", IMAGENET_MEAN), np.float32)
        self.std = np.asarray(cfg.get("image_std", IMAGENET_STD), np.float32)
        if not cfg.get("do_normalize", True):
            self.mean, self.std = np.zeros(3, np.float32), np.ones(3, np.float32)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the export's constant-folding notes are not ours
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise MissingModelError(
                f"the segment model in {self.folder} cannot be loaded: {str(e)[:200]}",
                hint=f"fetch it again: {registry.fetch_command(ROLE, self.folder.parent)}",
            ) from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x = cv2.resize(np.asarray(rgb, np.float32), (self.width, self.height),
                       interpolation=cv2.INTER_AREA if w > self.width else cv2.INTER_LINEAR)
        x = ((x - self.mean) / self.std).transpose(2, 0, 1)[None]
        logits = np.asarray(self.session.run(None, {self.input: np.ascontiguousarray(x)})[0],
                            np.float32)
        logits = logits.reshape(logits.shape[-2:])  # (1, 1, h, w) -> (h, w)
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def locate(models: Path | str | None) -> Path | None:
    """The role's complete local folder, or None when it is not on this machine."""
    try:
        return registry.locate(ROLE, models)
    except MissingModelError:
        return None


@lru_cache(maxsize=2)
def load(folder: Path) -> Segmenter:
    """One session per folder per process (a worker runs many jobs)."""
    return Segmenter(folder)
