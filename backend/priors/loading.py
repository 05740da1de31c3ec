"""Load a role's components: from its local folder (registry.locate) or, for cost benchmarks,
random weights at the real architecture's size (`random_weights=True`, no files at all).

fp16 on CUDA, fp32 on the CPU. Modules come back frozen and in eval mode; textual inversion
unfreezes the one embedding row it learns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import architectures, attention, graphs, registry


@dataclass
class Prior:
    """One role's modules on one device; `parts` by component name (unet, vae, ...)."""

    role: str
    device: torch.device
    dtype: torch.dtype
    parts: dict = field(default_factory=dict)
    source: str = ""

    def __getattr__(self, name):
        try:
            return self.__dict__["parts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> Prior:
        """Move every module (the pipeline keeps only the current stage's priors on the GPU)."""
        for m in self.parts.values():
            if isinstance(m, torch.nn.Module):
                m.to(device)
        self.device = torch.device(device)
        return self


def default_dtype(device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


# role -> (component, loader kind, architectures key)
_LAYOUT = {
    "sd": (("unet", "unet"), ("vae", "vae"), ("text_encoder", "text_encoder"),
           ("tokenizer", "tokenizer"), ("scheduler", "scheduler")),
    "zero123": (("unet", "unet"), ("vae", "vae"), ("image_encoder", "image_encoder"),
                ("cc_projection", "cc_projection"), ("scheduler", "scheduler")),
    "video": (("unet", "unet3d"), ("vae", "vae"), ("text_encoder", "video_text_encoder"),
              ("tokenizer", "tokenizer"), ("scheduler", "scheduler")),
    "controlnet_tile": (("controlnet", "controlnet"),),
    "depth": (("model", "depth"),),
}

_ZERO123_OVERRIDE = {"unet": {"in_channels": 8}}


def _load_component(kind: str, folder: Path, dtype):
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        UNet2DConditionModel,
        UNet3DConditionModel,
    )
    from transformers import (
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
        DPTForDepthEstimation,
    )

    variant = "fp16" if any(".fp16." in f.name for f in folder.glob("*")) else None
    diffusers_kw = {"torch_dtype": dtype, "variant": variant}
    if kind == "unet":
        return UNet2DConditionModel.from_pretrained(folder, **diffusers_kw)
    if kind == "unet3d":
        return UNet3DConditionModel.from_pretrained(folder, **diffusers_kw)
    if kind == "vae":
        return AutoencoderKL.from_pretrained(folder, **diffusers_kw)
    if kind == "controlnet":
        return ControlNetModel.from_pretrained(folder, **diffusers_kw)
    if kind == "cc_projection":
        return architectures.CCProjection.from_pretrained(folder, **diffusers_kw)
    if kind in ("text_encoder", "video_text_encoder"):
        return CLIPTextModel.from_pretrained(folder, dtype=dtype, variant=variant)
    if kind == "image_encoder":
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype, variant=variant)
    if kind == "tokenizer":
        return CLIPTokenizer.from_pretrained(folder)
    if kind == "scheduler":
        return DDIMScheduler.from_pretrained(folder)
    if kind == "depth":
        return DPTForDepthEstimation.from_pretrained(folder, dtype=dtype)
    raise KeyError(kind)


def _random_component(kind: str, role: str, dtype, device):
    from diffusers import DDIMScheduler

    if kind == "tokenizer":
        return architectures.tiny_tokenizer(max_length=77)  # ids are all the cost needs
    if kind == "scheduler":
        return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             clip_sample=False, set_alpha_to_one=False)
    if kind == "depth":
        # Depth runs once per job, in preprocess, which no cost figure is taken from: the tiny
        # architecture stands in so that the stages after it can be measured.
        from .tiny import tiny_depth

        return tiny_depth().to(device=device, dtype=dtype)
    override = _ZERO123_OVERRIDE.get(kind, {}) if role == "zero123" else {}
    with torch.device(device):
        module = architectures.build(kind, tiny=False, **override)
    return module.to(dtype)


def load(role: str, models: Path | str | None = None, device="cpu", *,
         dtype: torch.dtype | None = None, random_weights: bool = False,
         components: tuple[str, ...] | None = None,
         cuda_graphs: bool | None = None) -> Prior:
    """A role's modules, frozen, in eval mode, on `device`. On CUDA the no-grad UNet and
    ControlNet calls replay CUDA graphs (`graphs.py`; `cuda_graphs=False` or
    ANIMATE4D_CUDA_GRAPHS=0 turns that off). Which parts run compiled is a stage's choice,
    made later (`compiling.apply`, through `PriorPool.get`)."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    prior = Prior(role, device, dtype)
    folder = None if random_weights else registry.locate(role, models)
    prior.source = "random weights (real architecture)" if random_weights else str(folder)
    for name, kind in _LAYOUT[role]:
        if components is not None and name not in components:
            continue
        if random_weights:
            part = _random_component(kind, role, dtype, device)
        else:
            sub = folder / name if registry.ROLES[role].components != ("",) else folder
            part = _load_component(kind, sub, dtype)
        if isinstance(part, torch.nn.Module):
            part = part.to(device).eval().requires_grad_(False)
        if kind == "vae" and attention.enabled():  # 1024-px encodes (refine): attention.py
            attention.use_for_vae(part)
        prior.parts[name] = part
    if graphs.enabled(device) if cuda_graphs is None else cuda_graphs:
        graphs.wrap_parts(prior.parts)
    return prior
