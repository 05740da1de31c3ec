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


def write_tiny(out: Path, side: int = 64) -> None:
    """The role's layout with a tiny random model (`animate4d models make-tiny`): two 3x3
    convolutions as an ONNX graph with the real export's input and output names, beside a
    preprocessor config at a tiny input size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0.0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0.0, 0.5, (1, 4, 3, 3)).astype(np.float32)
    pads = [1, 1, 1, 1]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input_image", "w1"], ["h"], pads=pads),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["output_image"], pads=pads)],
        "tiny_segmenter",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output_image", TensorProto.FLOAT, [1, 1, side, side])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project accepts
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "onnx" / "model.onnx")
    (out / "config.json").write_text(json.dumps({"model_type": "birefnet"}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "size": {"height": side, "width": side}}, indent=2))
