"""Animate124 end to end: preprocess -> textual inversion -> static -> dynamic -> refine ->
export, with checkpoints, resume, cancel (the progress callback raises) and progress.

Checkpoints (keys in the job's Checkpoints store):
    "a124/prep"    the reference view, its depth, the framing (written once)
    "a124/token"   the learned token's embedding
    "a124/fields"  canonical + motion weights (fp32), the stage and the step reached;
                   written every `checkpoint_every` steps and at each stage's end. Optimiser
                   moments are not kept (they would triple the size past the 256 MB limit on
                   one checkpoint); Adam re-warms in a few steps after a resume.
Only the priors the current stage needs are on the device (PriorPool.keep).
"""

from __future__ import annotations

import copy
import gc
import io
import random

import numpy as np
import torch

from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.errors import DivergedError, MissingModelError
from animate4d.protocol.options import JobOptions

from ..checkpoints import Checkpoints, NoCheckpoints
from ..field import use_tensor_cores
from ..field.extract import extract
from ..field.fit import fit_shape
from ..field.render import half_opaque_density
from ..preprocess import framing
from ..preprocess.image_io import LoadedImage, load_image
from ..preprocess.segment import clean_mask, cut_out
from ..preview.colour import fill_background, sample_image
from ..preview.inflate import InflatedShape, inflate
from ..priors import compiling, graphs, guidance, loading, registry, text
from ..priors.sds import TimestepRange
from ..progress import ProgressFn, Stopwatch, no_progress
from ..version import versions
from . import stages
from .optimisation import optimise, stage_optimiser
from .presets import PRESETS, STAGES, Preset
from .reference_graph import ReferenceGraph
from .textual_inversion import learn_token


class PriorPool:
    """Loads priors on first use; `keep` releases the others (GPU memory per stage)."""

    def __init__(self, models, device, random_weights: bool = False):
        self.models, self.device, self.random_weights = models, device, random_weights
        self.loaded: dict[str, loading.Prior] = {}

    def get(self, role: str, stage: str = "") -> loading.Prior:
        """The role's prior, with the parts `stage` compiles compiled and the rest eager."""
        if role not in self.loaded:
            self.loaded[role] = loading.load(role, self.models, self.device,
                                             random_weights=self.random_weights)
        prior = self.loaded[role]
        compiling.apply(prior.parts, compiling.for_stage(stage), self.device)
        return prior

    def keep(self, *roles: str) -> None:
        dropped = [self.loaded.pop(r) for r in [r for r in self.loaded if r not in roles]]
        if any(compiling.holds_compiled(p.parts) for p in dropped):
            compiling.forget_compiled()
        del dropped
        # A prior caught in a reference cycle (a guidance closure, a graph wrapper) is freed
        # only by the collector: without it its GPU memory stays into the next stage.
        gc.collect()
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()


def check_models(preset: str, models) -> None:
    """Raise MissingModelError listing every missing role before any work starts."""
    missing = [r for r in registry.PRESET_ROLES[preset]
               if r not in registry.available_roles(models)]
    if missing:
        raise MissingModelError(
            f"the {preset} preset needs the models {', '.join(missing)}, which are not in "
            f"{models or 'ANIMATE4D_MODELS / the Hugging Face cache'}",
            hint="fetch them with: animate4d models fetch " + " ".join(missing)
            + (f" --models {models}" if models else ""))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _torch_load(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def reference_view(image: LoadedImage, mask, crop, size: int) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    """The cropped reference view at size x size: rgb (3, S, S) on white and the mask (S, S)."""
    rgba = torch.as_tensor(framing.crop_and_scale(image.rgba, mask, crop, size)).permute(2, 0, 1)
    return rgba[:3] * rgba[3:] + (1 - rgba[3:]), rgba[3]


def _prepare(image, options: JobOptions, preset: Preset, pool: PriorPool,
             progress: ProgressFn) -> dict:
    progress("preprocess", 0, 1)
    if not isinstance(image, LoadedImage):
        image = load_image(image)
    camera = (framing.fit_camera_to_image(Camera.from_dict(options.camera), image.size)
              if options.camera is not None else framing.canonical_camera(image.size))
    cutout = cut_out(image, seed=options.seed, models=pool.models)
    mask = cutout.mask
    crop = framing.find_crop(mask)
    big = max(preset.ti_size, preset.render_size, 256)
    rgb, view_mask = reference_view(image, mask, crop, big)
    depth_model = guidance.DepthEstimator(pool.get("depth"))
    depth = depth_model(rgb[None].to(pool.device)).cpu()
    progress("preprocess", 1, 1)
    return {"rgb": rgb, "mask": view_mask, "depth": depth,
            "transform": framing.object_to_world(crop, camera, options.target),
            "source": str(image.source).rsplit("/", 1)[-1],
            "segmentation": cutout.metadata()}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    squeeze = x.ndim == 2
    y = x[None, None] if squeeze else x[None]
    y = torch.nn.functional.interpolate(y, (size, size), mode="area")
    return y[0, 0] if squeeze else y[0]


# Every OCCUPANCY_EVERY steps of a field stage the occupancy grid is refreshed, at the times
# `occupancy_times` gives (`bench stages` counts both in its projection).
OCCUPANCY_EVERY = 16


def occupancy_times(stage: str) -> tuple:
    """The static stage's one canonical field; later stages' eight frames across the clip."""
    return (None,) if stage == "static" else tuple(k / 8 for k in range(8))


def _finite(scene: stages.Scene) -> bool:
    """Whether every parameter of the fields is finite (one host sync)."""
    params = [*scene.canonical.parameters(), *scene.motion.parameters()]
    return bool(torch.stack([p.isfinite().all() for p in params]).all())


def _diverged(stage: str, step: int, why: str) -> DivergedError:
    return DivergedError(f"the {stage} stage lost its scene by step {step} ({why}); the job "
                         f"stops here, its last good checkpoint kept",
                         hint="run it again with another seed; if it happens again, report "
                              "the image, the prompt and the preset")


def fields_checkpoint(scene: stages.Scene, stage: str, step: int) -> bytes:
    """The fields' checkpoint after `step` steps of `stage` (what a resumed job reloads)."""
    return _torch_bytes({"canonical": scene.canonical.state_dict(),
                         "motion": scene.motion.state_dict(), "stage": stage, "step": step})


def _textual_inversion(pool: PriorPool, prep: dict, preset: Preset, options: JobOptions,
                       checkpoints: Checkpoints, progress: ProgressFn,
                       random_weights: bool) -> None:
    """Learn the token (or take the job's checkpointed one) and leave it installed in SD.
    A function of its own so that no name in the run outlives it holding SD: the pool alone
    decides when SD leaves the GPU (a name left in `run_animate124` kept it there through
    the dynamic stage, and refinement loaded a second copy beside it)."""
    saved = checkpoints.get("a124/token")
    sd = pool.get("sd", "textual_inversion")
    if saved is not None:
        text.add_placeholder(sd.tokenizer, sd.text_encoder, _torch_load(saved))
        return
    token, _ = learn_token(sd, _resize(prep["rgb"], preset.ti_size), steps=preset.ti_steps,
                           size=preset.ti_size, batch=preset.ti_batch, lr=preset.ti_lr,
                           views=preset.ti_views, seed=options.seed, progress=progress,
                           use_cache=not random_weights)
    checkpoints.put("a124/token", _torch_bytes(token))


def run_animate124(image, options: JobOptions, progress: ProgressFn = no_progress,
                   checkpoints: Checkpoints | None = None, *, models=None,
                   preset: Preset | None = None, device=None,
                   random_weights: bool = False) -> AnimatedMesh:
    options.validate()
    preset = preset or PRESETS[options.preset]
    checkpoints = NoCheckpoints() if checkpoints is None else checkpoints
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_tensor_cores(device)
    if not random_weights:
        check_models(options.preset if options.preset in registry.PRESET_ROLES else "fast",
                     models)
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    pool = PriorPool(models, device, random_weights)
    clock = Stopwatch()

    saved = checkpoints.get("a124/prep")
    with clock.stage("preprocess"):
        prep = _torch_load(saved) if saved else _prepare(image, options, preset, pool, progress)
    if saved is None:
        checkpoints.put("a124/prep", _torch_bytes(prep))
    pool.keep()
    s = preset.render_size
    ref = stages.Reference(_resize(prep["rgb"], s).to(device), _resize(prep["mask"], s)
                           .to(device), _resize(prep["depth"], s).to(device))
    object_prompt = f"a {text.PLACEHOLDER}"
    motion_prompt = options.prompt or "an object is moving"

    # Textual inversion
    with clock.stage("textual_inversion"):
        _textual_inversion(pool, prep, preset, options, checkpoints, progress, random_weights)

    scene = stages.Scene(preset, device)
    state = checkpoints.get("a124/fields")
    done_stage, done_step = None, 0
    if state is not None:
        st = _torch_load(state)
        scene.canonical.load_state_dict(st["canonical"])
        scene.motion.load_state_dict(st["motion"])
        done_stage, done_step = st["stage"], st["step"]

    if state is None and preset.static_init == "proxy":
        with clock.stage("proxy"):
            progress("proxy", 0, 1)
            start_from_proxy(scene, prep, preset)
            progress("proxy", 1, 1)

    def save(stage, step):
        if not _finite(scene):  # a NaN checkpoint would replace the last good one
            raise _diverged(stage, step, "the fields hold non-finite values")
        checkpoints.put("a124/fields", fields_checkpoint(scene, stage, step))

    for stage in ("static", "dynamic", "refine"):
        total = preset.steps(stage)
        order = STAGES.index(stage)
        if done_stage is not None and STAGES.index(done_stage) > order:
            continue
        start = done_step if done_stage == stage else 0
        if start >= total:
            continue
        with clock.stage(stage):
            losses_fn = _stage_setup(stage, scene, ref, preset, pool, prep, object_prompt,
                                     motion_prompt, options)
            opt = stage_optimiser(scene, stage, preset)
            step_fn = stage_stepper(stage, scene, ref, preset, losses_fn, opt)
            for step in range(start, total):
                progress(stage, step, total)
                if (step % OCCUPANCY_EVERY == 0
                        and scene.refresh_occupancy(occupancy_times(stage)) == 0.0):
                    raise _diverged(stage, step, "no density is left anywhere in the scene")
                if stage == "dynamic":
                    scene.motion.open_levels(min(1.0, 2 * step / total))
                step_fn(rng, step / total, preset.reference_step(stage, step))
                if (step + 1) % preset.checkpoint_every == 0 and step + 1 < total:
                    save(stage, step + 1)
            save(stage, total)
            progress(stage, total, total)
            # Release this stage's guidance (its priors' CUDA graphs and their memory pools)
            # before the next stage loads its own.
            step_fn = losses_fn = opt = None
    with clock.stage("export"):
        progress("export", 0, 1)
        pool.keep()
        scene.refresh_occupancy(occupancy_times("export"))
        mesh, report = extract(
            scene.canonical, scene.motion, frames=options.frames, fps=options.fps,
            resolution=preset.export_resolution,
            threshold=half_opaque_density(scene.renderer.step_length),
            target_faces=preset.export_faces, transform=prep["transform"], device=device,
            metadata={"prompt": options.prompt, "preset": options.preset,
                      "seed": options.seed, "versions": versions(),
                      "source": prep["source"],
                      "segmentation": prep.get("segmentation", {})})
        progress("export", 1, 1)
    mesh.metadata["timings"] = clock.seconds
    mesh.metadata["export"] = report
    return mesh


def start_from_proxy(scene: stages.Scene, prep: dict, preset: Preset, size: int = 128) -> float:
    """Fit the canonical field to the preview proxy (the silhouette inflated as in preview
    mode, coloured from the reference view) so that the static stage starts from the shape
    the image shows instead of the density blob."""
    mask = clean_mask(_resize(prep["mask"], size).numpy() > 0.5, keep_fraction=0.02,
                      fill_holes=False)
    camera = framing.canonical_camera(size)
    shape = InflatedShape(mask, camera)
    surface, _ = inflate(mask, camera)
    rgba = torch.cat([prep["rgb"], prep["mask"][None]]).permute(1, 2, 0).numpy()
    colour_camera = framing.canonical_camera(rgba.shape[0])
    filled = fill_background(rgba).astype(np.float32)

    def inside(x):
        return torch.as_tensor(shape(x.detach().cpu().double().numpy()) > 0,
                               dtype=torch.float32)

    def colour(x):
        return torch.as_tensor(sample_image(x.detach().cpu().double().numpy(), colour_camera,
                                            filled), dtype=torch.float32)

    return fit_shape(scene.canonical, inside, near=torch.as_tensor(surface, dtype=torch.float32),
                     colour=colour, steps=preset.proxy_steps)


def stage_stepper(stage: str, scene: stages.Scene, ref: stages.Reference, preset: Preset,
                  losses_fn, opt: torch.optim.Optimizer):
    """`step(rng, progress, reference) -> losses`: one optimisation step of a field stage,
    its losses (`losses_fn`, from `_stage_setup`) and the optimiser's step; on CUDA the
    reference steps run as a CUDA graph (`ReferenceGraph`; ANIMATE4D_CUDA_GRAPHS=0: eager)."""
    clip = preset.clip_value(stage)
    graph = (ReferenceGraph(scene, ref, preset, opt, clip) if graphs.enabled(scene.device)
             else None)

    def step(rng, progress: float, reference: bool) -> dict:
        if reference and graph is not None:
            return graph.step()
        losses = losses_fn(rng, progress, reference)
        optimise(opt, losses, clip)
        return losses

    return step


def _stage_setup(stage, scene, ref, preset, pool, prep, object_prompt, motion_prompt, options):
    """The prior set-up for one stage and a closure doing one step:
    `step(rng, progress, reference)`."""
    def tr(pair):
        return TimestepRange(*pair)

    if stage in ("static", "dynamic"):
        z = pool.get("zero123", stage)
        zero123 = guidance.Zero123Guidance(z, scale=preset.zero123_scale,
                                           weight=preset.zero123_weight,
                                           timesteps=tr(preset.zero123_t),
                                           size=preset.zero123_size)
        zero123.set_reference(prep["rgb"][None].to(scene.device))
    if stage == "static":
        pool.keep("sd", "zero123")
        sd = guidance.StableDiffusionGuidance(pool.get("sd", stage), scale=preset.sd_scale,
                                              timesteps=tr(preset.sd_t), size=preset.sd_size)
        return lambda rng, p, r: stages.static_step(scene, ref, preset, sd, zero123,
                                                    object_prompt, rng, p, r)
    if stage == "dynamic":
        pool.keep("video", "zero123")
        video = guidance.VideoGuidance(pool.get("video", stage), scale=preset.video_scale,
                                       timesteps=tr(preset.video_t), size=preset.video_size)
        return lambda rng, p, r: stages.dynamic_step(scene, ref, preset, video, zero123,
                                                     motion_prompt, rng, p, r)
    pool.keep("sd", "controlnet_tile")
    tile = guidance.ControlNetTileGuidance(pool.get("sd", stage),
                                           pool.get("controlnet_tile", stage),
                                           scale=preset.tile_scale, timesteps=tr(preset.tile_t),
                                           size=preset.tile_size)
    frozen = stages.Scene(preset, scene.device)
    frozen.canonical.load_state_dict(copy.deepcopy(scene.canonical.state_dict()))
    frozen.motion.load_state_dict(copy.deepcopy(scene.motion.state_dict()))
    frozen.canonical.requires_grad_(False)
    frozen.motion.requires_grad_(False)
    frozen.occupancy = scene.occupancy
    frozen.renderer.occupancy = scene.occupancy
    prompt = f"a photo of {object_prompt}, {motion_prompt}"
    return lambda rng, p, r: stages.refine_step(scene, frozen, ref, preset, tile, prompt,
                                                options.frames, rng, p, r)


__all__ = ["run_animate124", "check_models", "PriorPool"]
