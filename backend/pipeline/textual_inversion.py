"""Textual inversion (diffusers-style) on the reference image: one new token whose embedding
makes Stable Diffusion denoise augmented views of the object well. Cached by a hash of the
image, the schedule and the model, so a second job on the same image skips it."""

from __future__ import annotations

import hashlib
import math
import os
import random
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from ..jobs.progress import ProgressFn, no_progress
from ..priors import text
from ..priors.loading import Prior
from ..runtime import switches
from .config import TextualInversionConfig
from .stages import gaussian_blur

_OFFICIAL = TextualInversionConfig()

# The object templates of the official script (diffusers' imagenet_templates_small).
TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
    "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
    "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}")


def cache_dir() -> Path:
    return switches.cache_folder() / "textual_inversion"


def cache_key(image: torch.Tensor, steps: int, size: int, batch: int, lr: float,
              model: str, views: int = 512, weight_decay: float = _OFFICIAL.weight_decay,
              initializer: str = _OFFICIAL.initializer) -> str:
    h = hashlib.sha256()
    h.update(image.detach().to(torch.float32).cpu().numpy().tobytes())
    h.update(f"{steps}|{size}|{batch}|{lr}|{model}|{views}|{weight_decay}|{initializer}".encode())
    return h.hexdigest()[:32]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = x.shape
    y, x0 = (h - size) // 2, (w - size) // 2
    return x[:, y : y + size, x0 : x0 + size]


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotated about its centre, the corners filled white."""
    a = torch.deg2rad(torch.tensor(degrees))
    theta = torch.tensor([[torch.cos(a), -torch.sin(a), 0.0],
                          [torch.sin(a), torch.cos(a), 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None] - 1, grid, align_corners=False)[0] + 1  # zeros pad -> white


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _resized_crop(x: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """A crop of 85-115% of the area (a crop can't exceed the image: up to 10 draws, then the
    whole image), aspect 3:4 to 4:3, resized to size x size."""
    _, h, w = x.shape
    for _ in range(10):
        area = h * w * rng.uniform(0.85, 1.15)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
            return F.interpolate(x[None, :, y : y + ch, x0 : x0 + cw], (size, size),
                                 mode="bilinear", align_corners=False, antialias=True)[0]
    return _resize(x, size)


def _jitter(x: torch.Tensor, rng: random.Random, amount: float = 0.04) -> torch.Tensor:
    """Brightness, contrast, saturation and hue each changed by up to `amount`, in a random
    order. Hue turns the chroma plane of YIQ (torchvision turns it in HSV: at 4% of a turn the
    two differ little)."""
    ops = ["brightness", "contrast", "saturation", "hue"]
    rng.shuffle(ops)
    for op in ops:
        if op == "hue":
            a = 2 * math.pi * rng.uniform(-amount, amount)
            yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                                [0.211, -0.523, 0.312]], dtype=x.dtype, device=x.device)
            turn = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)],
                                 [0.0, math.sin(a), math.cos(a)]], dtype=x.dtype,
                                device=x.device)
            m = torch.linalg.inv(yiq) @ turn @ yiq
            x = torch.einsum("ij,jhw->ihw", m, x)
        else:
            f = rng.uniform(1 - amount, 1 + amount)
            base = {"brightness": torch.zeros_like(x), "contrast": _gray(x).mean(),
                    "saturation": _gray(x)}[op]
            x = base + (x - base) * f
        x = x.clamp(0, 1)
    return x


def _augment(image: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """One view as the official script's `--use_augmentations` makes it: at 5/4 size, 3 in 4
    rotated by up to 10 degrees and cropped inside the rotation; a random resized crop; 3 in 4
    colour-jittered; 1 in 10 grey; 1 in 10 blurred; half mirrored. (3, S, S) in [0, 1]."""
    x = _resize(image, round(size * 5 / 4))
    if rng.random() < 0.75:
        x = _resize(_center_crop(_rotate(x, rng.uniform(-10, 10)), round(size * 5 / 6)), size)
    x = _resized_crop(x, size, rng)
    if rng.random() < 0.75:
        x = _jitter(x, rng)
    if rng.random() < 0.1:
        x = _gray(x).expand(3, -1, -1)
    if rng.random() < 0.1:
        x = gaussian_blur(x[None], 5, rng.uniform(0.1, 2.0))[0]
    if rng.random() < 0.5:
        x = x.flip(-1)
    return x.clamp(0, 1).contiguous()  # resampling may overshoot by an ulp


def cached_token(key: str) -> torch.Tensor | None:
    """The token learned earlier for this cache key, or None."""
    path = cache_dir() / f"{key}.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def store_token(key: str, vector: torch.Tensor) -> None:
    """Keep a learned token for later jobs on the same image and settings (atomic write)."""
    path = cache_dir() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: workers sharing the cache folder may learn the same token at once.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
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
    does; only the augmentations (`_augment`) come from a finite set (512 views against
    3,000 x 16 draws in the paper schedule)."""

    def __init__(self, sd: Prior, image: torch.Tensor, *, size: int, batch: int, lr: float,
                 views: int, seed: int = 0, weight_decay: float = _OFFICIAL.weight_decay,
                 initializer: str = _OFFICIAL.initializer):
        self.sd, self.batch = sd, batch
        self.token = text.add_placeholder(sd.tokenizer, sd.text_encoder, initializer=initializer)
        self.emb = sd.text_encoder.get_input_embeddings()
        self.original = self.emb.weight.detach().clone()
        # The fp32 master copy of the learned row: Adam's steps (~lr, 1e-4, per entry) are a
        # few fp16 ulps of the row's ~1e-2 entries, so fp16 would round them and lose the
        # smaller ones. The model's row gets its rounded value after every step.
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
