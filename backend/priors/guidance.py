"""The guidance modules: each turns renders into an SDS loss under one prior.

    StableDiffusionGuidance  text-conditioned SDS (static stage), learned token welcome
    Zero123Guidance          novel-view SDS around the reference image (static, dynamic)
    VideoGuidance            text-to-video SDS on a clip of frames (dynamic)
    ControlNetTileGuidance   one-step x0 target under ControlNet-tile (refinement)
    DepthEstimator           the reference view's relative depth (preprocess)

Renders come in as (B, 3, H, W) in [0, 1] (videos (F, 3, H, W)); they are resized to the
prior's resolution, encoded by its VAE (gradients flow through the encoder) and noised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime.device_tensors import to_device
from . import graphs, text
from .loading import Prior

# The SDS settings live with the SDS itself (a light module the config tree imports).
from .sds import SD, TILE, VIDEO, ZERO123, GuidanceConfig, SDSOutput, sds


def encode_images(vae, rgb: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(rgb, (size, size), mode="bilinear", align_corners=False) * 2 - 1
    latents = vae.encode(x.to(vae.dtype)).latent_dist.sample()
    return latents * vae.config.scaling_factor


def _vae_size(vae) -> int:
    return int(vae.config.sample_size)


class StableDiffusionGuidance:
    def __init__(self, prior: Prior, config: GuidanceConfig = SD):
        self.prior, self.scale, self.timesteps = prior, config.scale, config.timesteps
        self.size = config.size or _vae_size(prior.vae)
        self.alphas = to_device(prior.scheduler.alphas_cumprod, prior.device)  # once
        self._cache: dict[str, torch.Tensor] = {}

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Cond embeddings per prompt (cached: the prompt set is small and fixed per job)."""
        missing = [p for p in dict.fromkeys(prompts + [""]) if p not in self._cache]
        if missing:
            with torch.no_grad():
                out = text.encode(self.prior.tokenizer, self.prior.text_encoder, missing)
            self._cache.update(zip(missing, out, strict=True))
        return torch.stack([self._cache[p] for p in prompts])

    def forget_prompts(self):
        self._cache.clear()

    def view_embeddings(self, prompt: str, azimuths: list[float]) -> torch.Tensor:
        """Per view, the blend of the prompt's front, side and back embeddings by its azimuth
        from the reference (`text.direction_weights`): the prior is told which side it sees,
        without a jump in the prompt where one name gives way to the next."""
        emb = self.embeddings(text.direction_prompts(prompt))  # (3, tokens, width)
        w = torch.tensor([text.direction_weights(a) for a in azimuths], device=emb.device)
        return torch.einsum("vd,dtw->vtw", w.to(emb.dtype), emb)

    def __call__(self, rgb: torch.Tensor, prompts: list[str] | str, progress: float = 0.0,
                 t: torch.Tensor | None = None,
                 azimuths: list[float] | None = None) -> SDSOutput:
        """`prompts`: one per render, or one prompt whose views are blended by `azimuths`
        (degrees from the reference view, one per render)."""
        latents = encode_images(self.prior.vae, rgb, self.size)
        if azimuths is not None:
            cond = self.view_embeddings(prompts, azimuths)
        else:
            cond = self.embeddings(prompts)
        uncond = self.embeddings([""] * len(rgb))
        n = self.alphas.shape[0]
        t = t if t is not None else self.timesteps.sample(len(rgb), progress, n, rgb.device)

        def predict(x_t, t):
            eps = self.prior.unet(torch.cat([x_t, x_t]).to(self.prior.dtype), torch.cat([t, t]),
                                  encoder_hidden_states=torch.cat([uncond, cond])).sample
            return eps.chunk(2)

        return sds(latents, predict, scale=self.scale, alphas_cumprod=self.alphas, t=t)


def angle_to_reference(d_polar_deg: torch.Tensor, d_azimuth_deg: torch.Tensor) -> torch.Tensor:
    """Degrees between a view's direction from the object and the reference view's (polar 90,
    azimuth 0), from the view's polar and azimuth relative to the reference: the great-circle
    angle, 0 at the reference, 180 opposite it."""
    cos = torch.cos(torch.deg2rad(d_polar_deg)) * torch.cos(torch.deg2rad(d_azimuth_deg))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


class Zero123Guidance:
    """Conditioning: CLIP image embedding of the reference + (d_polar, sin d_az, cos d_az,
    d_radius) through cc_projection; the reference's VAE latents (unscaled mode) concatenated
    to the noisy latents. Unconditional: zeros for both. Each view's SDS weight is
    `weight` x its angle to the reference / 180 (Animate124's `zero123_grad_scale` 'angle'):
    near the reference view the reference losses already hold the object."""

    def __init__(self, prior: Prior, config: GuidanceConfig = ZERO123):
        self.prior, self.scale, self.timesteps = prior, config.scale, config.timesteps
        self.weight = config.weight
        self.size = config.size or _vae_size(prior.vae)
        self.alphas = to_device(prior.scheduler.alphas_cumprod, prior.device)  # once
        self.clip_embedding = self.ref_latents = None

    @torch.no_grad()
    def set_reference(self, rgb: torch.Tensor) -> None:
        """rgb (1, 3, H, W) in [0, 1] on a white background."""
        enc = self.prior.image_encoder
        size = enc.config.image_size
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=rgb.device)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=rgb.device)
        x = F.interpolate(rgb, (size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - mean[:, None, None]) / std[:, None, None]
        self.clip_embedding = enc(x.to(enc.dtype)).image_embeds[:, None]  # (1, 1, W)
        r = F.interpolate(rgb, (self.size, self.size), mode="bilinear", align_corners=False)
        vae = self.prior.vae
        self.ref_latents = vae.encode((r * 2 - 1).to(vae.dtype)).latent_dist.mode()

    def conditioning(self, d_polar_deg, d_azimuth_deg, d_radius) -> torch.Tensor:
        pose = torch.stack([torch.deg2rad(d_polar_deg), torch.sin(torch.deg2rad(d_azimuth_deg)),
                            torch.cos(torch.deg2rad(d_azimuth_deg)), d_radius], -1)
        emb = self.clip_embedding.expand(len(pose), -1, -1)
        x = torch.cat([emb, pose[:, None].to(emb.dtype)], -1)
        return self.prior.cc_projection(x)

    def __call__(self, rgb, d_polar_deg, d_azimuth_deg, d_radius, progress: float = 0.0,
                 t: torch.Tensor | None = None) -> SDSOutput:
        if self.clip_embedding is None:
            raise RuntimeError("Zero123Guidance.set_reference must be called first")
        b = len(rgb)
        dev = rgb.device
        as_t = [to_device(v, dev).expand(b) for v in (d_polar_deg, d_azimuth_deg, d_radius)]
        latents = encode_images(self.prior.vae, rgb, self.size)
        with torch.no_grad():
            cond = self.conditioning(*as_t)
        ref = self.ref_latents.expand(b, -1, -1, -1)
        n = self.alphas.shape[0]
        t = t if t is not None else self.timesteps.sample(b, progress, n, dev)
        dtype = self.prior.dtype
        weight = self.weight / 180.0 * angle_to_reference(as_t[0].float(), as_t[1].float())

        def predict(x_t, t):
            x_in = torch.cat([torch.cat([x_t.to(dtype), torch.zeros_like(ref)], 1),
                              torch.cat([x_t.to(dtype), ref], 1)])
            eps = self.prior.unet(x_in, torch.cat([t, t]),
                                  encoder_hidden_states=torch.cat([torch.zeros_like(cond),
                                                                   cond])).sample
            return eps.chunk(2)

        return sds(latents, predict, scale=self.scale, alphas_cumprod=self.alphas, t=t,
                   weight=weight.view(-1, 1, 1, 1))


class VideoGuidance:
    """ModelScope text-to-video SDS on one clip: frames (F, 3, H, W) -> latents (1, 4, F, h, w),
    one timestep for the whole clip."""

    def __init__(self, prior: Prior, config: GuidanceConfig = VIDEO):
        self.prior, self.scale, self.timesteps = prior, config.scale, config.timesteps
        self.size = config.size or _vae_size(prior.vae)
        self.alphas = to_device(prior.scheduler.alphas_cumprod, prior.device)  # once
        self._emb: dict[str, torch.Tensor] = {}

    def embeddings(self, prompt: str) -> torch.Tensor:
        if prompt not in self._emb:
            with torch.no_grad():
                self._emb[prompt] = text.encode(self.prior.tokenizer, self.prior.text_encoder,
                                                [prompt])
        return self._emb[prompt]

    def __call__(self, frames: torch.Tensor, prompt: str, progress: float = 0.0,
                 t: torch.Tensor | None = None) -> SDSOutput:
        lat = encode_images(self.prior.vae, frames, self.size)  # (F, 4, h, w)
        latents = lat.permute(1, 0, 2, 3)[None]  # (1, 4, F, h, w)
        cond, uncond = self.embeddings(prompt), self.embeddings("")
        n = self.alphas.shape[0]
        t = t if t is not None else self.timesteps.sample(1, progress, n, frames.device)

        def predict(x_t, t):
            eps = self.prior.unet(torch.cat([x_t, x_t]).to(self.prior.dtype), torch.cat([t, t]),
                                  encoder_hidden_states=torch.cat([uncond, cond])).sample
            return eps.chunk(2)

        return sds(latents, predict, scale=self.scale, alphas_cumprod=self.alphas, t=t)


class ControlNetTileGuidance:
    """SD + ControlNet-tile conditioned on renders of the frozen dynamic model; the target is
    the one-step denoised latents (Animate124's semantic refinement), prompt with the learned
    token."""

    def __init__(self, sd: Prior, controlnet: Prior, config: GuidanceConfig = TILE):
        self.sd_guidance = StableDiffusionGuidance(sd, config)
        # Batch 4 at 128^2 latents: GPU-bound, so no CUDA graphs (graphs.py says why).
        self.controlnet, self.unet = graphs.eager(controlnet.controlnet), graphs.eager(sd.unet)
        self.sd, self.scale, self.timesteps = sd, config.scale, config.timesteps
        self.size = self.sd_guidance.size

    def __call__(self, rgb: torch.Tensor, condition: torch.Tensor, prompt: str,
                 progress: float = 0.0, t: torch.Tensor | None = None) -> SDSOutput:
        b = len(rgb)
        latents = encode_images(self.sd.vae, rgb, self.size)
        cond = self.sd_guidance.embeddings([prompt] * b)
        uncond = self.sd_guidance.embeddings([""] * b)
        image = F.interpolate(condition, (self.size, self.size), mode="bilinear",
                              align_corners=False).to(self.sd.dtype)
        n = self.sd_guidance.alphas.shape[0]
        t = t if t is not None else self.timesteps.sample(b, progress, n, rgb.device)
        dtype = self.sd.dtype

        def predict(x_t, t):
            x_in, t_in = torch.cat([x_t, x_t]).to(dtype), torch.cat([t, t])
            emb = torch.cat([uncond, cond])
            down, mid = self.controlnet(x_in, t_in, encoder_hidden_states=emb,
                                        controlnet_cond=torch.cat([image, image]),
                                        return_dict=False)
            eps = self.unet(x_in, t_in, encoder_hidden_states=emb,
                            down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
            return eps.chunk(2)

        return sds(latents, predict, scale=self.scale, alphas_cumprod=self.sd_guidance.alphas,
                   t=t, target="x0")


class DepthEstimator:
    """Relative (inverse) depth of the reference view with DPT; larger = nearer."""

    def __init__(self, prior: Prior):
        self.model = prior.model
        cfg = self.model.config
        self.size = int(getattr(cfg.backbone_config, "image_size", None) or cfg.image_size)

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb (1, 3, H, W) in [0, 1] -> (H, W) float32."""
        h, w = rgb.shape[-2:]
        x = F.interpolate(rgb, (self.size, self.size), mode="bicubic", align_corners=False)
        x = ((x.clamp(0, 1) - 0.5) / 0.5).to(self.model.dtype)
        depth = self.model(pixel_values=x).predicted_depth[:, None].float()
        return F.interpolate(depth, (h, w), mode="bilinear", align_corners=False)[0, 0]


__all__ = ["StableDiffusionGuidance", "Zero123Guidance", "VideoGuidance",
           "ControlNetTileGuidance", "DepthEstimator"]
