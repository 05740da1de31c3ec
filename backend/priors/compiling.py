"""torch.compile for the priors' hot parts, chosen by name (`ANIMATE4D_COMPILE=vae,unet`).

Why it is worth measuring: the VAE encoders run with gradients on every SDS step (the render's
gradient comes back through them), and eagerly their group norms, SiLUs and cuDNN's NCHW <->
NHWC conversions cost about as much as their convolutions (docs/BENCHMARKS.md, the dynamic
stage's profile); Inductor fuses the norms with their activations, forward and backward. The
UNets' no-grad calls already replay CUDA graphs (graphs.py); a compiled UNet is what the graph
then captures. Compiling costs time once per process and per call shape (Inductor caches its
kernels on disk across processes).
"""

from __future__ import annotations

import os

import torch

# "vae" compiles the encoder only: the SDS stages never decode.
COMPILABLE = ("vae", "unet", "controlnet", "text_encoder")


def requested(names: str | None = None) -> tuple[str, ...]:
    """The parts named in `names` or ANIMATE4D_COMPILE (comma-separated; "" = none)."""
    raw = os.environ.get("ANIMATE4D_COMPILE", "") if names is None else names
    parts = tuple(p.strip() for p in raw.split(",") if p.strip())
    unknown = [p for p in parts if p not in COMPILABLE]
    if unknown:
        raise ValueError(f"cannot compile {', '.join(unknown)}: the parts that can be compiled "
                         f"are {', '.join(COMPILABLE)}")
    return parts


def compile_parts(parts: dict, names: tuple[str, ...]) -> None:
    """Compile the named parts of one prior in place (before any CUDA-graph wrapping)."""
    for name in names:
        if name not in parts:
            continue
        if name == "vae":
            parts["vae"].encoder = torch.compile(parts["vae"].encoder, dynamic=False)
        else:
            parts[name] = torch.compile(parts[name], dynamic=False)
