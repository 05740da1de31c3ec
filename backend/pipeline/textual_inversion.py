"""Textual inversion (diffusers-style) on the reference image: one new token whose embedding
makes Stable Diffusion denoise augmented views of the object well. Cached by a hash of the
image, the schedule and the model, so a second job on the same image skips it."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..priors import text
from ..priors.loading import Prior
from ..progress import ProgressFn, no_progress

TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a close-up photo of a {}",
             "a good photo of a {}", "a photo of the {}", "a cropped photo of a {}")


def cache_dir() -> Path:
    root = os.environ.get("ANIMATE4D_CACHE") or Path.home() / ".cache" / "animate4d"
    return Path(root) / "textual_inversion"


def cache_key(image: torch.Tensor, steps: int, size: int, batch: int, lr: float,
              model: str) -> str:
    h = hashlib.sha256()
    h.update(image.detach().to(torch.float32).cpu().numpy().tobytes())
    h.update(f"{steps}|{size}|{batch}|{lr}|{model}".encode())
    return h.hexdigest()[:32]


def _augment(image: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """Random crop (80-100%), horizontal flip, slight brightness change; (3, S, S) in [0, 1]."""
    _, h, w = image.shape
    s = rng.uniform(0.8, 1.0)
    ch, cw = max(1, int(h * s)), max(1, int(w * s))
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    crop = image[:, y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    crop = (crop * rng.uniform(0.9, 1.1)).clamp(0, 1)
    return F.interpolate(crop[None], (size, size), mode="bilinear", align_corners=False)[0]


def learn_token(sd: Prior, image: torch.Tensor, *, steps: int, size: int, batch: int,
                lr: float, seed: int = 0, progress: ProgressFn = no_progress,
                use_cache: bool = True) -> tuple[torch.Tensor, bool]:
    """image (3, H, W) in [0, 1] on white. Returns (the token's embedding, whether it came from
    the cache) and leaves the token installed in sd's tokenizer and text encoder."""
    key = cache_key(image, steps, size, batch, lr, sd.source)
    path = cache_dir() / f"{key}.pt"
    if use_cache and path.is_file():
        vector = torch.load(path, map_location="cpu", weights_only=True)
        text.add_placeholder(sd.tokenizer, sd.text_encoder, vector)
        progress("textual_inversion", steps, steps)
        return vector, True

    token = text.add_placeholder(sd.tokenizer, sd.text_encoder)
    emb = sd.text_encoder.get_input_embeddings()
    original = emb.weight.detach().clone()
    # The learned row is kept in fp32; the table (fp16 on CUDA) is refreshed from it.
    vector = emb.weight[token].detach().float().clone().requires_grad_(True)
    opt = torch.optim.AdamW([vector], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    alphas = sd.scheduler.alphas_cumprod.to(sd.device)
    n_train = alphas.shape[0]
    image = image.to(sd.device)
    for step in range(steps):
        progress("textual_inversion", step, steps)
        views = torch.stack([_augment(image, size, rng) for _ in range(batch)])
        with torch.no_grad():
            lat = sd.vae.encode((views * 2 - 1).to(sd.dtype)).latent_dist.sample()
            lat = lat * sd.vae.config.scaling_factor
        noise = torch.randn_like(lat)
        t = torch.randint(0, n_train, (batch,), device=sd.device)
        ab = alphas[t].view(-1, 1, 1, 1).to(lat.dtype)
        noisy = ab.sqrt() * lat + (1 - ab).sqrt() * noise
        prompts = [rng.choice(TEMPLATES).format(text.PLACEHOLDER) for _ in range(batch)]
        ids = sd.tokenizer(prompts, padding="max_length", truncation=True,
                           max_length=sd.tokenizer.model_max_length,
                           return_tensors="pt").input_ids.to(sd.device)
        # The whole table is frozen; the token's row is spliced in with gradients.
        table = torch.where(torch.arange(emb.num_embeddings, device=sd.device)[:, None] == token,
                            vector.to(emb.weight.dtype)[None], original)
        hidden = _encode_with_table(sd, table, ids)
        pred = sd.unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    progress("textual_inversion", steps, steps)
    vector = vector.detach().cpu()
    text.add_placeholder(sd.tokenizer, sd.text_encoder, vector)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(vector, tmp)
        tmp.replace(path)
    return vector, False


def _encode_with_table(sd: Prior, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's hidden states with token embeddings looked up in `table` (so the
    gradient reaches the learned row) instead of its own embedding weights."""
    emb_module = sd.text_encoder.get_input_embeddings()
    saved = emb_module.weight
    try:
        del emb_module.weight
        emb_module.weight = table
        return sd.text_encoder(ids)[0]
    finally:
        del emb_module.weight
        emb_module.weight = saved
