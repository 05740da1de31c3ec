"""`animate4d models make-tiny DIR`: tiny random models in exactly the real folders' layouts,
so that tests, CI and the demo run the real loading code and the real pipeline on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import architectures, registry, segmenter

_PIPELINES = {
    "sd": ("StableDiffusionPipeline", {"unet": ("diffusers", "UNet2DConditionModel"),
                                       "vae": ("diffusers", "AutoencoderKL"),
                                       "text_encoder": ("transformers", "CLIPTextModel"),
                                       "tokenizer": ("transformers", "CLIPTokenizer"),
                                       "scheduler": ("diffusers", "DDIMScheduler")}),
    "zero123": ("Zero1to3StableDiffusionPipeline",
                {"unet": ("diffusers", "UNet2DConditionModel"),
                 "vae": ("diffusers", "AutoencoderKL"),
                 "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
                 "cc_projection": ("pipeline_zero1to3", "CCProjection"),
                 "scheduler": ("diffusers", "DDIMScheduler")}),
    "video": ("TextToVideoSDPipeline", {"unet": ("diffusers", "UNet3DConditionModel"),
                                        "vae": ("diffusers", "AutoencoderKL"),
                                        "text_encoder": ("transformers", "CLIPTextModel"),
                                        "tokenizer": ("transformers", "CLIPTokenizer"),
                                        "scheduler": ("diffusers", "DDIMScheduler")}),
}


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False)


def tiny_depth():
    from transformers import BeitConfig, DPTConfig, DPTForDepthEstimation

    backbone = BeitConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=32, image_size=32, patch_size=8,
                          out_features=["stage1", "stage2", "stage3", "stage4"],
                          reshape_hidden_states=False, use_relative_position_bias=True)
    return DPTForDepthEstimation(DPTConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5], hidden_size=16, image_size=32, patch_size=8,
        head_in_index=-1, is_hybrid=False))


def make_tiny(folder: Path | str, roles=None, seed: int = 0) -> Path:
    """Write tiny random models for `roles` (default all) under folder/ROLE."""
    folder = Path(folder)
    torch.manual_seed(seed)
    for role in roles or registry.ROLES:
        out = folder / role
        out.mkdir(parents=True, exist_ok=True)
        if role in _PIPELINES:
            cls, comps = _PIPELINES[role]
            index = {"_class_name": cls, "_diffusers_version": "0.42.1"}
            for name, (lib, kind) in comps.items():
                index[name] = [lib, kind]
                if name == "tokenizer":
                    architectures.tiny_tokenizer().save_pretrained(out / name)
                elif name == "scheduler":
                    _scheduler().save_pretrained(out / name)
                else:
                    key = {"unet": "unet3d" if role == "video" else "unet"}.get(name, name)
                    override = {"in_channels": 8} if (role, name) == ("zero123", "unet") else {}
                    architectures.build(key, tiny=True, **override).save_pretrained(out / name)
            (out / "model_index.json").write_text(json.dumps(index, indent=2))
        elif role == "controlnet_tile":
            net = architectures.build("controlnet", tiny=True)
            with torch.no_grad():  # zero convolutions start at 0: make the condition matter
                for p in net.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.1)
            net.save_pretrained(out)
        elif role == "depth":
            tiny_depth().save_pretrained(out)
        elif role == "segment":
            segmenter.write_tiny(out)
        else:
            raise KeyError(role)
        # A marker, so that a job on these models takes their sizes (registry.is_tiny).
        (out / registry.TINY_MARKER).write_text(json.dumps({"tiny": True, "seed": seed}))
    return folder
