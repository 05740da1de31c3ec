"""One optimisation step of each SDS stage, on a `Scene` (fields, renderer, reference view).

Each step returns the losses it logged; the caller owns the optimiser, the schedule and the
checkpoints (run.py). Renders are (B, 3, H, W) in [0, 1] for the guidance modules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..field.fields import CanonicalField, SpectralMotionField
from ..field.render import DecayingOccupancyGrid, Renderer, Shading
from ..preprocess.framing import canonical_camera
from .cameras import orbit_camera, random_view, sample_clip
from .config import Animate124Config


@dataclass
class Reference:
    """The reference view at the render size: rgb (3, S, S) on white, mask (S, S), relative
    depth (S, S) from DPT (larger = nearer)."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor

    def __post_init__(self):
        # Fixed per job, so found once here: the depth loss's pixels as 0/1 weights, and
        # whether there are enough of them (a boolean index or a GPU count read in every
        # step was a host sync per step). Change the mask by making a new Reference.
        self.foreground = (self.mask > 0.5).to(self.depth.dtype)
        self.depth_usable = int(self.foreground.sum()) > 8


class Scene:
    """The fields, their occupancy grid and a renderer (eager: on CUDA the hash grids run as
    Triton kernels, which measured faster than torch.compile'd fields; docs/BENCHMARKS.md)."""

    def __init__(self, preset: Animate124Config, device, motion_terms: int | None = None):
        """`motion_terms`: a looping motion of that many Fourier terms (time 1 is time 0);
        None: a free motion over the clip (`field.motion_terms` terms of period 2)."""
        self.device = torch.device(device)
        self.motion_terms = motion_terms
        f = preset.field
        self.canonical = CanonicalField(1.0, blob_density=f.blob_density,
                                        blob_radius=f.blob_radius, levels=f.grid_levels,
                                        log2_table=f.grid_log2_table).to(device)
        self.motion = SpectralMotionField(
            1.0, terms=motion_terms or f.motion_terms, period=1.0 if motion_terms else 2.0,
            levels=f.motion_grid_levels, base_resolution=f.motion_base_resolution,
            finest_resolution=f.motion_finest_resolution,
            log2_table=f.grid_log2_table).to(device)
        self.occupancy = DecayingOccupancyGrid(1.0, f.occupancy_resolution, device=device,
                                               decay=f.occupancy_decay,
                                               threshold=f.occupancy_threshold)
        self.renderer = Renderer(self.canonical, self.motion, samples=preset.renderer.samples,
                                 normals=preset.renderer.normals,
                                 occupancy=self.occupancy)
        # Called as watcher(cameras, times, shading, background, rgb) after every render:
        # how oracle priors (`oracle.priors.RenderLog`) learn which view an image shows.
        self.watchers: list = []

    def use_normals(self, normals: str) -> None:
        """Shade with other normals from now on (refine on a small card): the same fields,
        samples and occupancy grid."""
        if normals != self.renderer.normals:
            self.renderer = Renderer(self.canonical, self.motion, samples=self.renderer.samples,
                                     normals=normals, occupancy=self.renderer.occupancy)

    @property
    def looping(self) -> bool:
        return self.motion_terms is not None

    def render(self, cameras, times, *, shading: Shading | None = None,
               background=(1.0, 1.0, 1.0)):
        rgb, out = self._render(cameras, times, shading, background, ())
        return rgb, out["alpha"], out["depth"]

    def render_regularised(self, cameras, times, preset: Animate124Config, stage: str,
                           progress: float, *, shading: Shading, background):
        """An SDS render (B, 3, H, W) and its regularisers' weighted losses
        (`regulariser_losses`); the renderer adds only the outputs those with a weight need."""
        rgb, out = self._render(cameras, times, shading, background,
                                regulariser_outputs(preset))
        return rgb, regulariser_losses(out, preset, stage, progress)

    def _render(self, cameras, times, shading, background, regularisers):
        shading = shading or Shading(mode="albedo")
        out = self.renderer.render(cameras, times, shading=shading, background=background,
                                   jitter=True, regularisers=regularisers)
        rgb = out["rgb"].permute(0, 3, 1, 2).clamp(0, 1)
        for watch in self.watchers:
            watch(cameras, times, shading, background, rgb.detach())
        return rgb, out

    def refresh_occupancy(self, times=(None,)) -> float:
        """Fold the density at `times` into the occupancy grid; returns the fraction of cells
        the fields fill now (0: no density left anywhere)."""
        return self.occupancy.update(self.renderer.density_at, times=times,
                                     chunk=self.renderer.points_per_call(self.device))


def _pearson_loss(pred: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - the Pearson correlation of pred and target over the pixels of weight 1 (0/1
    weights: the same as indexing those pixels, without the host sync an index costs)."""
    w = torch.ones_like(pred) if weight is None else weight
    n = w.sum().clamp(min=1)
    p, t = pred - (w * pred).sum() / n, target - (w * target).sum() / n
    # Clamped before the root, not after: a constant side (an empty render's depth, a flat
    # depth map) makes the product 0, and the root's gradient there is infinite: 0 x inf
    # made every gradient of the step NaN, and the field with it (the first GPU job).
    norms = ((w * p * p).sum() * (w * t * t).sum()).clamp(min=1e-16).sqrt()
    return 1 - (w * p * t).sum() / norms


def regulariser_outputs(preset: Animate124Config) -> tuple[str, ...]:
    """The per-ray sums the renderer must add for the regularisers that have a weight."""
    r = preset.regularisers
    return tuple(name for name, on in (("entropy", r.entropy > 0),
                                       ("orientation", r.orientation > 0),
                                       ("normal_image", r.normal_tv > 0 or r.normal_blur > 0))
                 if on)


def regulariser_losses(out: dict, preset: Animate124Config, stage: str,
                       progress: float) -> dict:
    """The weighted regularisers of one SDS render (the renderer's outputs, with the sums of
    `regulariser_outputs`): entropy and orientation as means over the samples in occupied
    cells (Animate124's means over its marched samples), the normal image's smoothness over
    every frame."""
    r, losses = preset.regularisers, {}
    samples = out["samples"].sum().clamp(min=1.0) if "samples" in out else None
    if "entropy" in out:
        losses["entropy"] = (preset.entropy_weight(stage, progress)
                             * out["entropy"].sum() / samples)
    if "orientation" in out:
        losses["orientation"] = r.orientation * out["orientation"].sum() / samples
    if "normal_image" in out:
        image = out["normal_image"]  # (B, H, W, 3)
        if r.normal_tv > 0:
            losses["normal_tv"] = r.normal_tv * normal_tv(image)
        if r.normal_blur > 0:
            losses["normal_blur"] = r.normal_blur * normal_blur(image)
    return losses


def normal_tv(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical plus of horizontal neighbours, images (B, H, W, C)."""
    return ((image[:, 1:] - image[:, :-1]).square().mean()
            + (image[:, :, 1:] - image[:, :, :-1]).square().mean())


def normal_blur(image: torch.Tensor, size: int = 9) -> torch.Tensor:
    """Mean squared difference between images (B, H, W, C) and their Gaussian blur (`size`
    px, sigma as torchvision's default for it, reflected edges: Animate124's smooth2d)."""
    img = image.permute(0, 3, 1, 2)
    return F.mse_loss(img, gaussian_blur(img, size, 0.3 * ((size - 1) * 0.5 - 1) + 0.8))


def gaussian_blur(img: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Images (B, C, H, W) blurred by a `size`-px Gaussian, edges reflected (torchvision's)."""
    x = torch.arange(size, device=img.device, dtype=img.dtype) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    pad = size // 2
    blurred = F.pad(img, (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(blurred, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(blurred, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def time_smoothness(motion, preset: Animate124Config, device) -> torch.Tensor:
    """The weighted mean squared change of the displacement over `regularisers.time_step`, at
    random points of the motion's box and random times (Animate124 penalises the change
    between its neighbouring time grids everywhere: motion that jumps between frames)."""
    r = preset.regularisers
    n, dt = r.time_points, r.time_step
    x = (torch.rand(n, 3, device=device) * 2 - 1) * motion.bound
    t = torch.rand(n, device=device) * (1 - dt)
    d = motion.displacement(torch.cat([x, x]), torch.cat([t, t + dt]))
    return r.time_smoothness * (d[n:] - d[:n]).square().sum(-1).mean()


def reference_losses(scene: Scene, ref: Reference, preset: Animate124Config) -> dict:
    """Reference-view RGB, mask and depth (1 - Pearson, foreground only) at frame 0."""
    cam = canonical_camera(ref.rgb.shape[-1])
    rgb, alpha, depth = scene.render([cam], [0.0])
    return reference_terms(rgb[0], alpha[0], depth[0], ref, preset)


def reference_terms(rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor,
                    ref: Reference, preset: Animate124Config) -> dict:
    """The reference losses of one render of the reference view: rgb (3, H, W), alpha and
    depth (H, W)."""
    m = ref.mask
    losses = {"ref_rgb": preset.reference.rgb * F.mse_loss(rgb * m, ref.rgb * m),
              "ref_mask": preset.reference.mask * F.mse_loss(alpha, m)}
    if ref.depth_usable:
        # DPT gives inverse depth: nearer is larger, so compare with -depth.
        losses["ref_depth"] = preset.reference.depth * _pearson_loss(-depth, ref.depth,
                                                               ref.foreground)
    return losses


class _Carried(torch.autograd.Function):
    """`value` in the forward; in the backward, `grad` (the loss's gradient with respect to
    `image`, already taken) for `image`."""

    @staticmethod
    def forward(ctx, image, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad * upstream, None, None


def prior_loss(loss_of, image: torch.Tensor) -> torch.Tensor:
    """`loss_of(image)` (one prior's SDS loss on renders) with its gradient carried back to
    `image` at once: the prior's graph (its VAE encoder's activations, with gradients) is
    freed here, before the next prior of the step encodes, instead of every prior's graph
    living until the step's backward (refine: the 1024-px ControlNet-tile encoder's beside the
    video prior's 16 frames). Returns a stand-in with the loss's value whose gradient with
    respect to `image` is the loss's: the same step, by the chain rule. The loss must reach
    nothing trainable but `image` (a prior is frozen)."""
    if not (torch.is_grad_enabled() and image.requires_grad):
        return loss_of(image)
    leaf = image.detach().requires_grad_(True)
    loss = loss_of(leaf)
    if not loss.requires_grad:
        return loss
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if grad is None:  # a loss that does not look at the renders (nothing to carry)
        return loss.detach()
    return _Carried.apply(image, loss.detach(), grad)


def sds_look(rng: random.Random, preset: Animate124Config, stage: str,
             progress: float) -> tuple[Shading, tuple[float, float, float]]:
    """The shading and background of one SDS render (Animate124's randomisation: the priors
    judge shape under varied light and never learn one background)."""
    if stage == "static" and progress < preset.static.normal_fraction:
        mode, ambient = "normals", 1.0
    else:
        p = preset.refine.p_textureless if stage == "refine" else preset.look.p_textureless
        mode = "textureless" if rng.random() < p else "lambertian"
        ambient = rng.uniform(*preset.look.ambient_range)
    offset = torch.tensor([rng.gauss(0.0, 1.0) for _ in range(3)])
    background = (rng.random(), rng.random(), rng.random())
    return Shading(mode=mode, ambient=ambient, light_offset=offset), background


def static_step(scene, ref, preset, sd_guidance, zero123, prompt, rng: random.Random,
                progress: float, reference: bool = False) -> dict:
    """A reference step (`Animate124Config.reference_step`) or one random view under SD and
    Zero123."""
    if reference:
        return reference_losses(scene, ref, preset)
    polar, az = random_view(rng, preset.views)
    cam = orbit_camera(polar, az, preset.renderer.size)
    shading, background = sds_look(rng, preset, "static", progress)
    rgb, regular = scene.render_regularised([cam], [0.0], preset, "static", progress,
                                            shading=shading, background=background)
    return {"sd": prior_loss(lambda x: sd_guidance(x, prompt, progress, azimuths=[az]).loss,
                             rgb),
            "zero123": prior_loss(lambda x: zero123(x, polar - 90.0, az, 0.0, progress).loss,
                                  rgb),
            **regular}


@dataclass
class Clip:
    """What one dynamic SDS step renders: a frame per (camera, time), and how it looks."""

    times: list[float]
    polars: list[float]
    azimuths: list[float]
    cameras: list
    shading: Shading
    background: tuple[float, float, float]


def sample_clip_views(rng: random.Random, preset: Animate124Config, progress: float,
                      wrap: bool = False, stage: str = "dynamic") -> Clip:
    """The clip of one dynamic or refine SDS step (times, a camera moving in most steps, the
    look; Animate124's refine draws its clips as its dynamic stage does, `run-cn.sh` and
    `run-dynamic.sh` giving the same flags); `wrap`: a looping scene's clips run on across its
    seam. The clip-steps benchmark renders the same clips."""
    d = preset.dynamic
    times = sample_clip(rng, d.clip_frames, d.time_steps, d.clip_span, d.p_start_at_zero,
                        d.p_mirror, wrap, d.mirror)
    polar, az = random_view(rng, preset.views)
    d_polar = d_az = 0.0
    if rng.random() < d.p_moving_camera:  # the camera moves while the clip plays
        d_polar = rng.uniform(-d.sweep_polar_deg, d.sweep_polar_deg)
        d_az = rng.uniform(-d.sweep_azimuth_deg, d.sweep_azimuth_deg)
    # Frame k is k / n of the way (Animate124's rand_poses_trajectory). The polar angle may
    # pass over the pole, as there: the camera stays upright, so the picture turns over.
    n = len(times)
    polars = [polar + d_polar * k / n for k in range(n)]
    azs = [az + d_az * k / n for k in range(n)]
    size = preset.refine.render_size if stage == "refine" else preset.renderer.size
    cams = [orbit_camera(p, a, size) for p, a in zip(polars, azs, strict=True)]
    shading, background = sds_look(rng, preset, stage, progress)
    return Clip([float(t) for t in times], polars, azs, cams, shading, background)


def dynamic_step(scene, ref, preset, video, zero123, prompt, rng: random.Random,
                 progress: float, reference: bool = False) -> dict:
    """A reference step, or one clip under the video prior. A clip that plays forward from
    time 0 also shows its first frame to Zero123 (Animate124: only then is that frame the
    canonical object the static stage made); `zero123` None: no such term (a frozen
    canonical field, whose frame 0 no parameter can change)."""
    if reference:
        return reference_losses(scene, ref, preset)
    clip = sample_clip_views(rng, preset, progress, wrap=scene.looping)
    frames, regular = scene.render_regularised(clip.cameras, clip.times, preset, "dynamic",
                                               progress, shading=clip.shading,
                                               background=clip.background)
    losses = {"video": prior_loss(lambda x: video(x, prompt, progress).loss, frames)}
    if zero123 is not None and clip.times[0] == 0.0:
        losses["zero123"] = prior_loss(lambda x: zero123(x, clip.polars[0] - 90.0,
                                                         clip.azimuths[0], 0.0, progress).loss,
                                       frames[:1])
    return {**losses, **regular, **_time_losses(scene, preset)}


def _time_losses(scene: Scene, preset: Animate124Config) -> dict:
    if preset.regularisers.time_smoothness <= 0:
        return {}
    return {"time_smoothness": time_smoothness(scene.motion, preset, scene.device)}


def tile_frames(clip_frames: int, count: int) -> list[int]:
    """The clip frames ControlNet-tile sees: `count` evenly spaced from the first ({0, 8} of
    16, Animate124's `--cn_frame_method even`)."""
    count = min(count, clip_frames)
    return [k * clip_frames // count for k in range(count)]


@dataclass
class RefineGuidance:
    """The priors of a refine step and their prompts: ControlNet-tile, and beside it, as
    Animate124 keeps them, the video prior and Zero123."""

    tile: object
    tile_prompt: str
    video: object | None
    """None when the stage runs without it (`refine.video_every` 0)."""
    video_prompt: str
    zero123: object


def refine_step(scene, frozen: Scene, ref, preset, guide: RefineGuidance, rng: random.Random,
                progress: float, reference: bool = False, with_video: bool = True) -> dict:
    """A reference step, or one clip (the dynamic stage's clips and moving cameras) under
    ControlNet-tile on `tile_frames` of it, the video prior on all of it (`with_video`) and
    Zero123 on its first frame when it plays forward from time 0 (Animate124's dnerf/utils.py
    `train_step` with `--guidance SD zero123 CN`). The tile's condition is the frozen
    dynamic model's render of the same frames. A step without the video prior renders only
    the tile's frames (the first among them, for Zero123)."""
    if reference:
        return reference_losses(scene, ref, preset)
    clip = sample_clip_views(rng, preset, progress, wrap=scene.looping, stage="refine")
    with_video = with_video and guide.video is not None
    tiled = tile_frames(len(clip.times), preset.refine.tile_frames)
    shown = list(range(len(clip.times))) if with_video else tiled
    rgb, regular = scene.render_regularised([clip.cameras[k] for k in shown],
                                            [clip.times[k] for k in shown], preset, "refine",
                                            progress, shading=clip.shading,
                                            background=clip.background)
    with torch.no_grad():  # the condition: the frozen model seen the same way
        cond, _, _ = frozen.render([clip.cameras[k] for k in tiled],
                                   [clip.times[k] for k in tiled], shading=clip.shading,
                                   background=clip.background)
    losses = {"tile": prior_loss(lambda x: guide.tile(x, cond, guide.tile_prompt,
                                                     progress).loss,
                                 rgb[[shown.index(k) for k in tiled]])}
    if with_video:
        losses["video"] = prior_loss(lambda x: guide.video(x, guide.video_prompt,
                                                           progress).loss, rgb)
    if clip.times[0] == 0.0:  # frame 0 is always shown: the tile's frames start there
        losses["zero123"] = prior_loss(lambda x: guide.zero123(x, clip.polars[0] - 90.0,
                                                               clip.azimuths[0], 0.0,
                                                               progress).loss, rgb[:1])
    return {**losses, **regular, **_time_losses(scene, preset)}
