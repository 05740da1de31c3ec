"""Model configurations: the real ones (for `--random-weights`: the published architectures,
so time and memory are what the pretrained models cost) and tiny ones in the same layout (for
tests, CI and the demo). One function builds each component from either.

Real sizes: SD 1.5 UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M; Zero-1-to-3 XL is the SD UNet
with 8 input channels plus CLIP ViT-L/14 vision and a 772 -> 768 projection; ModelScope T2V
1.7B is a UNet3D (1.4B) with OpenCLIP ViT-H/14 text (354M); ControlNet 1.1 copies the SD
encoder (361M).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    ConfigMixin,
    ControlNetModel,
    ModelMixin,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from diffusers.configuration_utils import register_to_config


class CCProjection(ModelMixin, ConfigMixin):
    """Zero-1-to-3's projection of [CLIP image embedding, polar, sin az, cos az, radius] back to
    the UNet's cross-attention width. The attribute is named as in the public diffusers
    conversion, so its weights load."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x):
        return self.projection(x)


_SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
_SD_CH = (320, 640, 1280, 1280)

REAL = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=_SD_DOWN,
                 up_block_types=_SD_UP, block_out_channels=_SD_CH, layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, sample_size=512),
    "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    "image_encoder": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, image_size=224, patch_size=14,
                          projection_dim=768, hidden_act="quick_gelu"),
    "cc_projection": dict(in_channel=772, out_channel=768),
    "unet3d": dict(sample_size=32, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                   up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
                   block_out_channels=_SD_CH, layers_per_block=2, cross_attention_dim=1024,
                   attention_head_dim=64),
    "video_text_encoder": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                               num_hidden_layers=23, num_attention_heads=16,
                               max_position_embeddings=77, hidden_act="gelu",
                               projection_dim=1024),
    "controlnet": dict(in_channels=4, down_block_types=_SD_DOWN, block_out_channels=_SD_CH,
                       layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                       conditioning_embedding_out_channels=(16, 32, 96, 256)),
}

# Tiny: 2 resolution levels, so the VAE downsamples by 2 (not 8) and ControlNet's conditioning
# embedding by 2 to match.
_T_DOWN, _T_UP = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
TINY_TEXT_WIDTH = 16
TINY = {
    "unet": dict(sample_size=8, in_channels=4, out_channels=4, down_block_types=_T_DOWN,
                 up_block_types=_T_UP, block_out_channels=(8, 16), layers_per_block=1,
                 cross_attention_dim=TINY_TEXT_WIDTH, attention_head_dim=2, norm_num_groups=4),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16),
    "text_encoder": dict(vocab_size=128, hidden_size=TINY_TEXT_WIDTH, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                         projection_dim=TINY_TEXT_WIDTH, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
    "image_encoder": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, image_size=32, patch_size=8,
                          projection_dim=TINY_TEXT_WIDTH),
    "cc_projection": dict(in_channel=TINY_TEXT_WIDTH + 4, out_channel=TINY_TEXT_WIDTH),
    "unet3d": dict(sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(8, 16),
                   layers_per_block=1, cross_attention_dim=TINY_TEXT_WIDTH, attention_head_dim=2,
                   norm_num_groups=4),
    "video_text_encoder": None,  # the same as "text_encoder" when tiny
    "controlnet": dict(in_channels=4, down_block_types=_T_DOWN, block_out_channels=(8, 16),
                       layers_per_block=1, cross_attention_dim=TINY_TEXT_WIDTH,
                       attention_head_dim=2, norm_num_groups=4,
                       conditioning_embedding_out_channels=(4, 8)),
}


def build(component: str, tiny: bool, **override):
    """A randomly initialised component at the real or the tiny size."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    table = TINY if tiny else REAL
    cfg = table[component] or table["text_encoder"]
    cfg = {**cfg, **override}
    if component == "unet":
        return UNet2DConditionModel(**cfg)
    if component == "vae":
        return AutoencoderKL(**cfg)
    if component in ("text_encoder", "video_text_encoder"):
        return CLIPTextModel(CLIPTextConfig(**cfg))
    if component == "image_encoder":
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
    if component == "cc_projection":
        return CCProjection(**cfg)
    if component == "unet3d":
        return UNet3DConditionModel(**cfg)
    if component == "controlnet":
        return ControlNetModel(**cfg)
    raise KeyError(component)


def tiny_tokenizer(max_length: int = 16):
    """A CLIP BPE tokenizer over a handful of words (transformers 5 ignores vocab_file=)."""
    from transformers import CLIPTokenizer

    words = ["a", "the", "panda", "cat", "is", "dancing", "waving", "view", "front", "side",
             "back", "of", "photo", "walking", "jumping", "running", "turning", "object"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in words:
        vocab[f"{w}</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(f"{ch}</w>", len(vocab))
        vocab.setdefault(ch, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    return tok
