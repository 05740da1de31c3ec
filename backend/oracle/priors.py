"""Oracle priors: every diffusion prior replaced by one that knows the ground truth, in the
real priors' layout (`loading.Prior` with unet, vae, text encoder, tokenizer, scheduler,
cc_projection, image encoder, controlnet), so the guidance modules and the SDS maths run
unchanged: the renders are encoded by a VAE (gradients through it), noised at a drawn timestep,
denoised by a "unet" under classifier-free guidance, and the SDS gradient follows.

What each denoiser knows (it predicts the noise as if the clean latents were its target x0):
    SD, ControlNet-tile  x0 = the truth seen from the same camera at the same time, shaded
                         the same way on the same background;
    Zero123              x0 = the truth at time 0 seen from the reference camera moved by the
                         pose the pipeline passes (a wrong sign or axis there is a wrong target);
    video                x0 = the truth from each frame's camera at the clip's instants in
                         playing order: it knows which instants the clip covers, not which
                         frame shows which, so a clip fed backwards is pulled towards the
                         motion played the other way (docs/DECISIONS.md "Oracle priors").
The unconditional branch knows nothing of the truth but is a perfect generic denoiser: its
clean estimate is the image it was given (the VAE keeps the clean latents it encoded), so it
predicts the noise exactly. That is what a real prior's unconditional branch is good at and
what makes SDS work: the drawn noise cancels, and classifier-free guidance scales the pull
towards the truth by its scale, as it scales the pull towards the text with real priors. (A
flat-prior branch, predicting no noise, left the drawn noise times the scale, 99 x noise at
the SD scale of 100, in every gradient: nothing was learned in a few hundred steps.)

Which camera, time and look an image has comes from the scene (`RenderLog`, a
`stages.Scene` watcher): the VAE finds each image it encodes among the latest renders.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from animate4d.protocol import Camera

from ..field.render import Shading
from ..pipeline.cameras import orbit_camera
from ..pipeline.config import Animate124Config
from ..preprocess.framing import CANONICAL_RADIUS
from ..priors.loading import Prior
from .truth import GroundTruth

# The channel of the conditioning that says "conditional" (1) or "unconditional" (0), and the
# channels Zero123's pose is passed on.
_FLAG, _POSE = 0, slice(1, 5)
WIDTH = 8  # conditioning width (text tokens, Zero123's projection)
CLIP_WIDTH = 4  # the oracle image encoder's embedding width
TOKENS = 16
# How the video oracle picks its target clip (`OracleDenoiser._clip`).
VIDEO_MATCH = ("timed", "noisy")


@dataclass(frozen=True)
class View:
    camera: Camera
    time: float
    shading: Shading
    background: tuple


class RenderLog:
    """The scene's latest renders (a `Scene.watchers` entry): each image's view, and the image
    itself, so that an image handed to a prior can be told apart from its neighbours."""

    def __init__(self, keep: int = 4):
        self.keep, self.renders = keep, []

    def __call__(self, cameras, times, shading, background, rgb):
        views = [View(c, float(t or 0.0), shading, tuple(float(b) for b in background))
                 for c, t in zip(cameras, times, strict=True)]
        self.renders = [(views, rgb), *self.renders][: self.keep]

    def find(self, images: torch.Tensor) -> list[View] | None:
        """The views of `images` (B, 3, S, S) in [-1, 1] as the guidance hands them to the VAE
        (renders resized to S), newest renders first; None if any image is not a render."""
        size = images.shape[-2:]
        for views, rgb in self.renders:
            resized = F.interpolate(rgb.to(images.device, torch.float32), size,
                                    mode="bilinear", align_corners=False) * 2 - 1
            gap = (images.float()[:, None] - resized[None]).abs().flatten(2).amax(-1)
            best = gap.min(1)
            if bool((best.values < 1e-5).all()):
                # Equal images (a still scene from one camera) map to the first: the same
                # picture, so the same target.
                return [views[int(i)] for i in best.indices]
        return None


class OracleVAE(torch.nn.Module):
    """Latents that are a small faithful image: the picture average-pooled by `factor`, its
    three channels plus their mean (four, as SD's VAE has). Deterministic."""

    def __init__(self, log: RenderLog, size: int, factor: int):
        super().__init__()
        self.log, self.factor = log, factor
        self.config = SimpleNamespace(scaling_factor=1.0, sample_size=size, latent_channels=4)
        self.last_views: list[View] | None = None
        self.last_clean: torch.Tensor | None = None  # the latents last encoded, no grad
        self.encoder = torch.nn.Identity()  # where compiling would put a compiled encoder

    @property
    def dtype(self):
        return torch.float32

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        p = F.avg_pool2d(x.float(), self.factor)
        return torch.cat([p, p.mean(1, keepdim=True)], 1)

    def encode(self, x: torch.Tensor):
        self.last_views = self.log.find(x.detach())
        z = self.latents(x)
        self.last_clean = z.detach()
        dist = SimpleNamespace(sample=lambda: z, mode=lambda: z)
        return SimpleNamespace(latent_dist=dist)


class OracleTextEncoder(torch.nn.Module):
    """Says only whether a prompt says anything: the flag channel is 1 unless every token is
    a start, end or padding token (the empty prompt of the unconditional branch)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.special = sorted({tokenizer.bos_token_id, tokenizer.eos_token_id,
                               tokenizer.pad_token_id} - {None})
        self.embeddings = torch.nn.Embedding(len(tokenizer), 1)

    @property
    def device(self):
        return self.embeddings.weight.device

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, ids: torch.Tensor):
        said = ~torch.isin(ids, torch.tensor(self.special, device=ids.device))
        out = torch.zeros(*ids.shape, WIDTH, device=ids.device)
        out[..., _FLAG] = said.any(-1, keepdim=True).float()
        return (out,)


class OracleImageEncoder(torch.nn.Module):
    """Zero123's CLIP image encoder: the oracle needs nothing from the reference image."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(image_size=32)
        self.dtype = torch.float32

    def forward(self, x):
        return SimpleNamespace(image_embeds=torch.zeros(len(x), CLIP_WIDTH, device=x.device))


def oracle_cc_projection() -> torch.nn.Linear:
    """Zero123's projection of [image embedding, pose]: the flag in its bias, the pose copied
    through, so the denoiser reads the pose the pipeline passed."""
    lin = torch.nn.Linear(CLIP_WIDTH + 4, WIDTH)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.bias[_FLAG] = 1.0
        for i in range(4):
            lin.weight[_POSE.start + i, CLIP_WIDTH + i] = 1.0
    return lin.requires_grad_(False)


class OracleControlNet(torch.nn.Module):
    """ControlNet-tile: the oracle's target is the truth, whatever the condition shows."""

    def forward(self, x, t, **kw):
        return [], None


class OracleDenoiser(torch.nn.Module):
    """The noise prediction for a target x0: eps = (x_t - sqrt(a) x0) / sqrt(1 - a), x0 the
    truth's latents on the conditional rows and the encoded images' own on the unconditional
    ones. `kind`: "image" (SD, ControlNet-tile), "zero123" or "video"."""

    def __init__(self, kind: str, truth: GroundTruth, vae: OracleVAE,
                 alphas_cumprod: torch.Tensor, config: Animate124Config, looping: bool,
                 match: str = "timed"):
        super().__init__()
        if match not in VIDEO_MATCH:
            raise ValueError(f"the video oracle's match must be one of {', '.join(VIDEO_MATCH)}")
        self.kind, self.truth, self.vae, self.match = kind, truth, vae, match
        self.alphas = alphas_cumprod
        self.preset, self.looping = config, looping
        self.dtype = torch.float32

    def forward(self, x, t, encoder_hidden_states=None, **kw):
        x = x.float()
        cond = encoder_hidden_states[:, :, _FLAG].amax(1) > 0.5
        xt = x[:, :4] if self.kind == "zero123" else x  # Zero123: [noisy, reference]
        ab = self.alphas.to(x.device)[t].float().view(-1, *([1] * (x.ndim - 1)))
        x0 = self._clean(xt.shape).expand_as(xt).clone()
        rows = torch.nonzero(cond).flatten().tolist()
        if rows:
            x0[rows] = self._targets(xt[rows], ab[rows], encoder_hidden_states[rows])
        return SimpleNamespace(sample=(xt - ab.sqrt() * x0) / (1 - ab).sqrt())

    def _clean(self, shape) -> torch.Tensor:
        """The clean latents of the images being denoised, in the unet's layout: per image
        (B, C, h, w), or one clip (1, C, F, h, w), repeated over the batch's halves."""
        clean = self.vae.last_clean
        if clean is None:
            raise RuntimeError("oracle: a prior was called before its VAE encoded anything")
        if self.kind == "video":
            clean = clean.permute(1, 0, 2, 3)[None]
        return clean.repeat(shape[0] // len(clean), *([1] * (clean.ndim - 1)))

    def _views(self) -> list[View]:
        if self.vae.last_views is None:
            raise RuntimeError("oracle: the image a prior was given is none of the scene's "
                               "latest renders, so its view is unknown")
        return self.vae.last_views

    def _encode(self, images: torch.Tensor, shape) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] to latents of `shape` (h, w), as the guidance
        encodes renders."""
        f = self.vae.factor
        x = F.interpolate(images, (shape[0] * f, shape[1] * f), mode="bilinear",
                          align_corners=False) * 2 - 1
        return self.vae.latents(x)

    def _truth(self, views: list[View], shape, device) -> torch.Tensor:
        """The truth's latents for `views`, rendered together where they share a look and a
        resolution (a clip's frames: one call)."""
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(views):
            look = (repr(v.shading), v.background, v.camera.resolution)
            groups.setdefault(look, []).append(i)
        imgs = [None] * len(views)
        for rows in groups.values():
            first = views[rows[0]]
            r = self.truth.render_many([views[i].camera for i in rows],
                                       [views[i].time for i in rows], first.shading,
                                       first.background)
            for k, i in enumerate(rows):
                imgs[i] = r.rgb[k]
        return self._encode(torch.stack(imgs).to(device), shape)

    def _targets(self, xt, ab, states) -> torch.Tensor:
        if self.kind == "image":
            return self._truth(self._views(), xt.shape[-2:], xt.device)
        if self.kind == "zero123":
            return self._truth([self._posed(v, p) for v, p in
                                zip(self._views(), states[:, 0, _POSE], strict=True)],
                               xt.shape[-2:], xt.device)
        return torch.stack([self._clip(xt[i], ab[i]) for i in range(len(xt))])

    @staticmethod
    def _posed(view: View, pose: torch.Tensor) -> View:
        """The reference camera (polar 90, azimuth 0) moved by Zero123's pose (d polar in
        radians, sin and cos of d azimuth, d radius), at time 0."""
        d_polar, s, c, d_radius = (float(v) for v in pose)
        camera = orbit_camera(90.0 + math.degrees(d_polar), math.degrees(math.atan2(s, c)),
                              view.camera.resolution[0], radius=CANONICAL_RADIUS + d_radius)
        return View(camera, 0.0, view.shading, view.background)

    def _clip(self, xt: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """The target (C, F, h, w) for the noisy clip xt (C, F, h, w).

        "timed": the truth from each frame's camera at the clip's times taken in increasing
        order, so frame k is the k-th instant whatever time it was rendered at (a clip fed
        backwards is pulled towards the motion played the other way). "noisy": the exact
        posterior mean over every forward clip of the sampler's spans and starts given xt,
        times unknown (docs/DECISIONS.md says why that is not the default)."""
        views = self._views()
        if self.match == "timed":
            times = self._forward(views)
            return self._truth([View(v.camera, t, v.shading, v.background)
                                for v, t in zip(views, times, strict=True)],
                               xt.shape[-2:], xt.device).permute(1, 0, 2, 3)
        table, clips = self._candidates(views, xt.shape[-2:], xt.device)  # (F, J, C, h, w)
        k = torch.arange(len(views), device=xt.device)
        cands = table[k[None], clips]  # (N, F, C, h, w)
        noisy = xt.permute(1, 0, 2, 3)[None]
        err = (noisy - ab.sqrt() * cands).square().flatten(1).sum(1)
        w = torch.softmax(-err / (2 * (1 - ab.flatten()[0])), 0)
        return (w.view(-1, 1, 1, 1, 1) * cands).sum(0).permute(1, 0, 2, 3)

    def _forward(self, views: list[View]) -> list[float]:
        """The clip's times in playing order: increasing; for a looping truth, increasing
        round the loop from just after the largest gap between them (a clip that runs over
        the seam, 0.75, 0.875, 0, 0.125, plays in that order). Evenly spaced times round the
        whole loop have no largest gap: the order then starts at the first frame's time."""
        times = sorted(v.time for v in views)
        if not self.looping or len(times) < 2:
            return times
        gaps = [b - a for a, b in itertools.pairwise(times)] + [1 + times[0] - times[-1]]
        widest = max(gaps)
        starts = [(i + 1) % len(times) for i, g in enumerate(gaps) if g > widest - 1e-6]
        first = times.index(min(times, key=lambda t: abs(t - views[0].time)))
        start = first if first in starts else starts[0]
        return times[start:] + times[:start]

    def _candidates(self, views: list[View], shape, device):
        """The truth per frame's camera at every time the clip sampler can give (F, J, ...),
        and the index of each forward clip's times (N, F)."""
        d = self.preset.dynamic
        steps, n = d.time_steps, len(views)
        grid = list(range(steps)) if self.looping else list(range(steps + 1))
        table = torch.stack([self._truth([View(v.camera, j / steps, v.shading, v.background)
                                          for j in grid], shape, device) for v in views])
        clips = set()
        for span in range(max(d.clip_span[0], n), min(d.clip_span[1], steps) + 1):
            last = steps - 1 if self.looping else steps - span
            for start in range(last + 1):
                idx = [(start + (k * span) // n) % steps for k in range(n)]
                clips.add(tuple(idx))
                mirrored = [steps - i for i in reversed(idx)]
                clips.add(tuple(i % steps for i in mirrored) if self.looping
                          else tuple(mirrored))
        return table, torch.tensor(sorted(clips), device=device)


def oracle_priors(truth: GroundTruth, log: RenderLog, config: Animate124Config,
                  device, looping: bool = False, factor: int = 4,
                  video_match: str = "timed") -> dict[str, Prior]:
    """One oracle Prior per role the field stages use (sd, zero123, video, controlnet_tile),
    sharing one VAE (it holds which views it last encoded)."""
    from ..priors.architectures import tiny_tokenizer
    from ..priors.tiny import _scheduler

    device = torch.device(device)
    scheduler = _scheduler()
    alphas = scheduler.alphas_cumprod
    tokenizer = tiny_tokenizer(TOKENS)
    sd_size = config.guidance.sd.size or config.renderer.size
    vae = OracleVAE(log, sd_size, factor)

    def denoiser(kind):
        return OracleDenoiser(kind, truth, vae, alphas, config, looping, video_match)

    def prior(role, **parts):
        return Prior(role, device, torch.float32, {**parts, "scheduler": scheduler},
                     source="oracle")

    text = OracleTextEncoder(tokenizer).to(device)
    return {
        "sd": prior("sd", unet=denoiser("image"), vae=vae, text_encoder=text,
                    tokenizer=tokenizer),
        "zero123": prior("zero123", unet=denoiser("zero123"), vae=vae,
                         image_encoder=OracleImageEncoder(),
                         cc_projection=oracle_cc_projection().to(device)),
        "video": prior("video", unet=denoiser("video"), vae=vae, text_encoder=text,
                       tokenizer=tokenizer),
        "controlnet_tile": Prior("controlnet_tile", device, torch.float32,
                                 {"controlnet": OracleControlNet()}, source="oracle"),
    }
