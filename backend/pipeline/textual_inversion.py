"""Textual inversion (diffusers-style) on the reference image: one new token whose embedding
makes Stable Diffusion denoise augmented views of the object well. Cached by a hash of the
image, the schedule and the model, so a second job on the same image skips it."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..jobs.progress import ProgressFn, no_progress
from ..priors import text
from ..priors.loading import Prior
from ..runtime import switches
from .config import TextualInversionConfig

_OFFICIAL = TextualInversionConfig()

TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a close-up photo of a {}",
             "a good photo of a {}", "a photo of the {}", "a cropped photo of a {}")


def cache_dir() -> Path:
    return switches.cache_folder() / "textual_inversion"


def cache_key(image: torch.Tensor, steps: int, size: int, batch: int, lr: float,
              model: str, views: int = 512, weight_decay: float = _OFFICIAL.weight_decay,
              initializer: str = _OFFICIAL.initializer) -> str:
    h = hashlib.sha256()
    h.update(image.detach().to(torch.float32).cpu().numpy().tobytes())
    h.update(f"{steps}|{size}|{batch}|{lr}|{model}|{views}|{weight_decay}|{initializer}".encode())
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


def cached_token(key: str) -> torch.Tensor | None:
    """The token learned earlier for this cache key, or None."""
    path = cache_dir() / f"{key}.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def store_token(key: str, vector: torch.Tensor) -> None:
    """Keep a learned token for later jobs on the same image and settings (atomic write)."""
    path = cache_dir() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(vector, tmp)
    tmp.replace(path)


def learn_token(sd: Prior, image: torch.Tensor, *, steps: int, size: int, batch: int,
                lr: float, views: int = 512, seed: int = 0, progress: ProgressFn = no_progress,
                use_cache: bool = True, weight_decay: float = _OFFICIAL.weight_decay,
                initializer: str = _OFFICIAL.initializer) -> tuple[torch.Tensor, bool]:
    """image (3, H, W) in [0, 1] on white. Returns (the token's embedding, whether it came from
    the cache) and leaves the token installed in sd's tokenizer and text encoder."""
    key = cache_key(image, steps, size, batch, lr, sd.source, views, weight_decay, initializer)
    vector = cached_token(key) if use_cache else None
    if vector is not None:
        text.add_placeholder(sd.tokenizer, sd.text_encoder, vector)
        progress("textual_inversion", steps, steps)
        return vector, True

    trainer = TokenTrainer(sd, image, size=size, batch=batch, lr=lr,
                           views=min(views, steps * batch), seed=seed,
                           weight_decay=weight_decay, initializer=initializer)
    for step in range(steps):
        progress("textual_inversion", step, steps)
        trainer.step()
    progress("textual_inversion", steps, steps)
    vector = trainer.vector.detach().cpu()
    text.add_placeholder(sd.tokenizer, sd.text_encoder, vector)
    if use_cache:
        store_token(key, vector)
    return vector, False


class TokenTrainer:
    """The optimisation behind `learn_token`, one `step()` at a time (the bench times it).

    The augmented views are drawn from a bank of `views` views encoded once: the SD VAE
    encoder at 512 px costs about as much as the UNet's forward pass, so encoding 16 fresh
    views every step would be half of the stage (docs/BENCHMARKS.md). Each step still
    samples the latent from each view's posterior (mean + std * noise), as diffusers' script
    does; only the crops, flips and brightness come from a finite set (512 views against
    3,000 x 16 draws in the paper schedule)."""

    def __init__(self, sd: Prior, image: torch.Tensor, *, size: int, batch: int, lr: float,
                 views: int, seed: int = 0, weight_decay: float = _OFFICIAL.weight_decay,
                 initializer: str = _OFFICIAL.initializer):
        self.sd, self.batch = sd, batch
        self.token = text.add_placeholder(sd.tokenizer, sd.text_encoder, initializer=initializer)
        self.emb = sd.text_encoder.get_input_embeddings()
        self.original = self.emb.weight.detach().clone()
        # The fp32 master copy of the learned row: the optimiser's steps (~lr x 1e-4 of the
        # row's ~1e-2 entries) would mostly round away in fp16. The model's row gets its rounded
        # value after every step.
        self.vector = self.emb.weight[self.token].detach().float().clone().requires_grad_(True)
        self.opt = torch.optim.AdamW([self.vector], lr=lr, weight_decay=weight_decay)
        self.scale = LossScale()
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        self.alphas = sd.scheduler.alphas_cumprod.to(sd.device)
        self.mean, self.std = self._encode_views(image.to(sd.device), size, max(1, views))

    @torch.no_grad()
    def _encode_views(self, image, size, views) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        for i in range(0, views, self.batch):
            n = min(self.batch, views - i)
            batch = torch.stack([_augment(image, size, self.rng) for _ in range(n)])
            dist = self.sd.vae.encode((batch * 2 - 1).to(self.sd.dtype)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        return torch.cat(means), torch.cat(stds)

    def loss(self) -> torch.Tensor:
        """The denoising loss of one random batch, with gradients to the master copy."""
        sd, batch = self.sd, self.batch
        pick = torch.tensor([self.rng.randrange(len(self.mean)) for _ in range(batch)],
                            device=sd.device)
        mean, std = self.mean[pick], self.std[pick]
        lat = (mean + std * torch.randn_like(mean)) * sd.vae.config.scaling_factor
        noise = torch.randn_like(lat)
        t = torch.randint(0, self.alphas.shape[0], (batch,), device=sd.device)
        ab = self.alphas[t].view(-1, 1, 1, 1).to(lat.dtype)
        noisy = ab.sqrt() * lat + (1 - ab).sqrt() * noise
        prompts = [self.rng.choice(TEMPLATES).format(text.PLACEHOLDER) for _ in range(batch)]
        ids = sd.tokenizer(prompts, padding="max_length", truncation=True,
                           max_length=sd.tokenizer.model_max_length,
                           return_tensors="pt").input_ids.to(sd.device)
        # The whole table is frozen; the token's row is spliced in with gradients.
        rows = torch.arange(self.emb.num_embeddings, device=sd.device)[:, None]
        table = torch.where(rows == self.token, self.vector.to(self.emb.weight.dtype)[None],
                            self.original)
        hidden = _encode_with_table(sd, table, ids)
        pred = sd.unet(noisy, t, encoder_hidden_states=hidden).sample
        return F.mse_loss(pred.float(), noise.float())

    def step(self) -> torch.Tensor:
        """One update; returns the (unscaled) loss. The gradient, unscaled, is left in
        `vector.grad`; a step whose gradient overflowed is skipped."""
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        # Scaled: the gradient reaching the row through the fp16 text encoder is ~1e-6 per
        # element, where fp16 loses precision or flushes to zero.
        (loss * self.scale.value).backward()
        self.vector.grad.div_(self.scale.value)
        if self.scale.update(self.vector.grad):
            self.opt.step()
            with torch.no_grad():
                self.emb.weight[self.token] = self.vector.to(self.emb.weight.dtype)
        return loss.detach()


class LossScale:
    """Dynamic loss scaling as torch.cuda.amp.GradScaler does it (its defaults): start at
    2^16, halve on a non-finite gradient (that step skipped), double after `interval` finite
    steps in a row. Powers of two, so scaling and unscaling are exact."""

    def __init__(self, value: float = 2.0**16, interval: int = 2000):
        self.value, self.interval, self.good = value, interval, 0

    def update(self, grad: torch.Tensor) -> bool:
        """Whether the step with this (unscaled) gradient should be taken."""
        if not torch.isfinite(grad).all():
            self.value, self.good = self.value / 2, 0
            return False
        self.good += 1
        if self.good == self.interval:
            self.value, self.good = self.value * 2, 0
        return True


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
