"""Animate124 as a method (`jobs.method`): preprocess -> textual inversion -> [proxy] ->
static -> dynamic -> refine -> export, each a Stage that the generic runner drives.

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
import itertools
import random

import numpy as np
import torch

from animate4d.protocol import AnimatedMesh, Camera
from animate4d.protocol.errors import DivergedError, MissingModelError
from animate4d.protocol.options import JobOptions

from ..config import as_dict
from ..field import use_tensor_cores
from ..field.extract import NothingToExtract, extract
from ..field.fit import fit_shape
from ..field.render import half_opaque_density
from ..jobs.checkpoints import Checkpoints
from ..jobs.method import Method, Stage, run_method
from ..jobs.progress import ProgressFn, no_progress
from ..preprocess import framing
from ..preprocess.image_io import LoadedImage, load_image
from ..preprocess.segment import clean_mask, cut_out
from ..preview.colour import fill_background, sample_image
from ..preview.inflate import InflatedShape, inflate
from ..priors import compiling, graphs, guidance, loading, registry, text
from ..runtime import devices, switches
from ..version import versions
from . import stages
from .config import Animate124Config
from .optimisation import optimise, stage_optimiser
from .reference_graph import ReferenceGraph
from .textual_inversion import TokenTrainer, cache_key, cached_token, store_token

# The model roles every Animate124 preset needs.
ROLES = ("sd", "zero123", "video", "controlnet_tile", "depth")

# Every OCCUPANCY_EVERY steps of a field stage the occupancy grid is refreshed, at the times
# `occupancy_times` gives.
OCCUPANCY_EVERY = 16


class PriorPool:
    """Loads priors on first use; `keep` releases the others (GPU memory per stage). Once the
    job's token is learned (`token`), every SD loaded has it installed: a stage that loads SD
    again after another dropped it (refine, after dynamic) must see the same object word."""

    def __init__(self, models, device, random_weights: bool = False):
        self.models, self.device, self.random_weights = models, device, random_weights
        self.loaded: dict[str, loading.Prior] = {}
        self.token: torch.Tensor | None = None

    def get(self, role: str, stage: str = "", cuda_graphs: bool = True) -> loading.Prior:
        """The role's prior, with the parts `stage` compiles compiled and the rest eager;
        `cuda_graphs=False`: its graphable parts run eagerly from now on, and the graphs an
        earlier stage captured (their memory pools) are freed."""
        if role not in self.loaded:
            self.loaded[role] = loading.load(role, self.models, self.device,
                                             random_weights=self.random_weights)
            if role == "sd" and self.token is not None:
                prior = self.loaded[role]
                text.add_placeholder(prior.tokenizer, prior.text_encoder, self.token)
        prior = self.loaded[role]
        compiling.apply(prior.parts, compiling.for_stage(stage), self.device)
        if (not cuda_graphs and graphs.unwrap_parts(prior.parts)
                and torch.device(self.device).type == "cuda"):
            torch.cuda.empty_cache()
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


def check_models(preset: str, models, roles=ROLES, *, mode: str = "") -> None:
    """Raise MissingModelError listing every missing role before any work starts; `mode`
    names a mode whose roles differ from the preset's own (mesh mode)."""
    missing = [r for r in roles if r not in registry.available_roles(models)]
    if missing:
        mode = f" in {mode}" if mode else ""
        raise MissingModelError(
            f"the {preset} preset{mode} needs the models {', '.join(missing)}, which are not in "
            f"{models or 'ANIMATE4D_MODELS / the Hugging Face cache'}",
            hint="fetch them (with internet access) into a folder, then pass it with --models "
            "or ANIMATE4D_MODELS: " + registry.fetch_command(" ".join(missing), models))


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


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    squeeze = x.ndim == 2
    y = x[None, None] if squeeze else x[None]
    y = torch.nn.functional.interpolate(y, (size, size), mode="area")
    return y[0, 0] if squeeze else y[0]


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


def job_scene(config: Animate124Config, device, options: JobOptions,
              saved: dict | None = None) -> stages.Scene:
    """A job's fields (looping when the options ask), with the weights of a checkpoint's
    `saved` fields when given."""
    scene = stages.Scene(config, device, options.motion_terms if options.loop else None)
    if saved is not None:
        scene.canonical.load_state_dict(saved["canonical"])
        scene.motion.load_state_dict(saved["motion"])
    return scene


def start_from_proxy(scene: stages.Scene, prep: dict, preset: Animate124Config,
                     size: int = 128) -> float:
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
                     colour=colour, steps=preset.static.proxy_steps,
                     points=preset.static.proxy_points)


def stage_stepper(stage: str, scene: stages.Scene, ref: stages.Reference,
                  preset: Animate124Config, losses_fn, opt: torch.optim.Optimizer,
                  cuda_graphs: bool = True):
    """`step(rng, progress, reference) -> losses`: one optimisation step of a field stage,
    its losses (`losses_fn`, a field stage's `losses`) and the optimiser's step; on CUDA the
    reference steps run as a CUDA graph (`ReferenceGraph`; `cuda_graphs` False or the
    `cuda_graphs` switch off: eager)."""
    clip = preset.clip_value(stage)
    graph = (ReferenceGraph(scene, ref, preset, opt, clip)
             if cuda_graphs and graphs.enabled(scene.device) else None)

    def step(rng, progress: float, reference: bool) -> dict:
        if reference and graph is not None:
            return graph.step()
        losses = losses_fn(rng, progress, reference)
        optimise(opt, losses, clip)
        return losses

    return step


class Preprocess(Stage):
    """Load the image, cut the object out, frame it, and estimate the reference view's depth."""

    name = "preprocess"

    def __init__(self, job: Animate124):
        self.job = job

    def step(self, step: int) -> None:
        job, options, preset = self.job, self.job.options, self.job.config
        image = job.image if isinstance(job.image, LoadedImage) else load_image(job.image)
        camera = (framing.fit_camera_to_image(Camera.from_dict(options.camera), image.size)
                  if options.camera is not None else framing.canonical_camera(image.size))
        cutout = cut_out(image, seed=options.seed, models=job.models)
        mask = cutout.mask
        crop = framing.find_crop(mask)
        big = max(preset.textual_inversion.size, preset.renderer.size, 256)
        rgb, view_mask = reference_view(image, mask, crop, big)
        depth = guidance.DepthEstimator(job.pool.get("depth"))(rgb[None].to(job.device)).cpu()
        job.set_prep({"rgb": rgb, "mask": view_mask, "depth": depth,
                      "transform": framing.object_to_world(crop, camera, options.target),
                      "source": str(image.source).rsplit("/", 1)[-1],
                      "segmentation": cutout.metadata()})


class TextualInversion(Stage):
    """Learn the object's token on SD (or take it from the cache of earlier jobs)."""

    name = "textual_inversion"

    def __init__(self, job: Animate124):
        self.job = job
        self.steps = job.config.textual_inversion.steps
        self.trainer = None

    def setup(self, start: int) -> bool:
        job, ti = self.job, self.job.config.textual_inversion
        sd = job.pool.get("sd", self.name)
        image = _resize(job.prep["rgb"], ti.size)
        self.key = cache_key(image, ti.steps, ti.size, ti.batch, ti.lr, sd.source, ti.views,
                             ti.weight_decay, ti.initializer)
        vector = cached_token(self.key) if job.token_cache else None
        if vector is not None:
            job.pool.token = vector
            text.add_placeholder(sd.tokenizer, sd.text_encoder, vector)
            return False
        self.trainer = TokenTrainer(sd, image, size=ti.size, batch=ti.batch, lr=ti.lr,
                                    views=min(ti.views, ti.steps * ti.batch),
                                    seed=job.options.seed, weight_decay=ti.weight_decay,
                                    initializer=ti.initializer)
        return True

    def step(self, step: int) -> None:
        self.trainer.step()
        if step == self.steps - 1:  # learned: install it, and keep it for later jobs
            job, sd = self.job, self.job.pool.get("sd", self.name)
            job.pool.token = self.trainer.vector.detach().cpu()
            text.add_placeholder(sd.tokenizer, sd.text_encoder, job.pool.token)
            if job.token_cache:
                store_token(self.key, job.pool.token)

    def release(self) -> None:
        self.trainer = None


class Proxy(Stage):
    """Fit the preview proxy into the canonical field (`static.init` 'proxy')."""

    name = "proxy"

    def __init__(self, job: Animate124):
        self.job = job

    def step(self, step: int) -> None:
        # Fitted with the levels the static stage starts with: masking the fine levels after
        # the fit would change the shape it starts from.
        scene, cfg = self.job.scene(), self.job.config
        scene.canonical.open_levels(cfg.static.levels_open(0))
        start_from_proxy(scene, self.job.prep, cfg)


class FieldStage(Stage):
    """A stage that optimises the fields: the occupancy refresh, the divergence check and
    the optimiser step are the same in each; `losses` sets up the stage's priors and returns
    its loss function `losses_fn(rng, progress, reference)`."""

    def __init__(self, job: Animate124):
        self.job = job
        self.steps = job.config.steps(self.name)
        self.checkpoint_every = job.config.checkpoint_every
        self.step_fn = None

    @property
    def cuda_graphs(self) -> bool:
        """Whether this stage's priors and reference steps may replay CUDA graphs."""
        return True

    def losses(self, scene: stages.Scene):
        raise NotImplementedError

    def setup(self, start: int) -> None:
        job, scene = self.job, self.job.scene()
        losses_fn = self.losses(scene)
        opt = stage_optimiser(scene, self.name, job.config)
        self.step_fn = stage_stepper(self.name, scene, job.ref, job.config, losses_fn, opt,
                                     self.cuda_graphs)

    def step(self, step: int) -> None:
        job, scene = self.job, self.job.scene()
        if (step % OCCUPANCY_EVERY == 0
                and scene.refresh_occupancy(occupancy_times(self.name)) == 0.0):
            raise _diverged(self.name, step, "no density is left anywhere in the scene")
        self.before_step(scene, step)
        self.step_fn(job.rng, step / self.steps, job.config.reference_step(self.name, step))

    def before_step(self, scene: stages.Scene, step: int) -> None:
        """What a stage changes in the scene before a step (the dynamic stage's levels)."""

    def release(self) -> None:
        # This stage's guidance (its priors' CUDA graphs and their memory pools) goes before
        # the next stage loads its own.
        self.step_fn = None

    def _zero123(self, scene: stages.Scene):
        cfg, pool = self.job.config, self.job.pool
        zero123 = guidance.Zero123Guidance(pool.get("zero123", self.name, self.cuda_graphs),
                                           cfg.guidance.zero123)
        zero123.set_reference(self.job.prep["rgb"][None].to(scene.device))
        return zero123


class Static(FieldStage):
    """Reference view + SD SDS + Zero123 SDS on the canonical field."""

    name = "static"

    def losses(self, scene):
        job, cfg = self.job, self.job.config
        zero123 = self._zero123(scene)
        job.pool.keep("sd", "zero123")
        sd = guidance.StableDiffusionGuidance(job.pool.get("sd", self.name), cfg.guidance.sd)
        prompt = cfg.static.prompt.format(job.object_prompt)
        return lambda rng, p, r: stages.static_step(scene, job.ref, cfg, sd, zero123, prompt,
                                                    rng, p, r)

    def before_step(self, scene, step):
        scene.canonical.open_levels(self.job.config.static.levels_open(step))


class Dynamic(FieldStage):
    """Video SDS on clips, Zero123 on clips that start at time 0."""

    name = "dynamic"

    def losses(self, scene):
        job, cfg = self.job, self.job.config
        zero123 = self._zero123(scene)
        job.pool.keep("video", "zero123")
        video = guidance.VideoGuidance(job.pool.get("video", self.name), cfg.guidance.video)
        return lambda rng, p, r: stages.dynamic_step(scene, job.ref, cfg, video, zero123,
                                                     job.motion_prompt, rng, p, r)

    def before_step(self, scene, step):
        scene.motion.open_levels(self.job.config.dynamic.motion_levels
                                 * min(1.0, 2 * step / self.steps))


class Refine(FieldStage):
    """ControlNet-tile SDS against the frozen dynamic model's renders, beside the video prior
    (every `refine.video_every`-th prior step) and Zero123 on clips that start at time 0."""

    name = "refine"

    @property
    def cuda_graphs(self) -> bool:
        return self.job.refine_cuda_graphs

    def losses(self, scene):
        job, cfg, graphed = self.job, self.job.config, self.cuda_graphs
        every = cfg.refine.video_every
        zero123 = self._zero123(scene)
        job.pool.keep("sd", "controlnet_tile", "zero123", *(("video",) if every else ()))
        tile = guidance.ControlNetTileGuidance(job.pool.get("sd", self.name, graphed),
                                               job.pool.get("controlnet_tile", self.name,
                                                            graphed),
                                               cfg.guidance.tile)
        video = (guidance.VideoGuidance(job.pool.get("video", self.name, graphed),
                                        cfg.guidance.video) if every else None)
        guide = stages.RefineGuidance(tile, f"a photo of {job.object_prompt}, "
                                            f"{job.motion_prompt}",
                                      video, job.motion_prompt, zero123)
        frozen = stages.Scene(cfg, scene.device, scene.motion_terms)
        frozen.canonical.load_state_dict(copy.deepcopy(scene.canonical.state_dict()))
        frozen.motion.load_state_dict(copy.deepcopy(scene.motion.state_dict()))
        frozen.canonical.requires_grad_(False)
        frozen.motion.requires_grad_(False)
        frozen.occupancy = scene.occupancy
        frozen.renderer.occupancy = scene.occupancy
        for each in (scene, frozen):  # the targets shaded as the renders they pull
            each.use_normals(job.refine_normals)
        # Counted over the prior steps, not the stage's steps: every `reference.every`-th
        # step is a reference step, which an every-k-th step rule would keep hitting.
        prior_steps = itertools.count()

        def losses_fn(rng, p, r):
            with_video = not r and every > 0 and next(prior_steps) % every == 0
            return stages.refine_step(scene, frozen, job.ref, cfg, guide, rng, p, r,
                                      with_video=with_video)

        return losses_fn


class Export(Stage):
    """The animated mesh: marching cubes on the canonical field, carried through time."""

    name = "export"

    def __init__(self, job: Animate124):
        self.job = job

    def step(self, step: int) -> None:
        job, cfg, options = self.job, self.job.config, self.job.options
        job.pool.keep()
        scene = job.scene()
        scene.refresh_occupancy(occupancy_times("export"))
        try:
            job.mesh, job.report = extract(
                scene.canonical, scene.motion, frames=options.frames, fps=options.fps,
                resolution=cfg.export.resolution,
                threshold=half_opaque_density(scene.renderer.step_length),
                target_faces=cfg.export.faces, transform=job.prep["transform"],
                device=job.device,
                metadata={"prompt": options.prompt, "preset": options.preset,
                          "seed": options.seed, "versions": versions(), "loop": options.loop,
                          "source": job.prep["source"],
                          "segmentation": job.prep.get("segmentation", {})})
        except NothingToExtract as e:  # a scene that faded away: the job's end, not a bug
            raise _diverged("export", 0, str(e)) from None


class Animate124(Method):
    """One Animate124 job: its options, config, priors, scene and stages."""

    name = "animate124"

    def __init__(self, image, options: JobOptions, config: Animate124Config, *, models=None,
                 device=None, random_weights: bool = False):
        options.validate()
        self.image, self.options, self.config = image, options, config
        self.models, self.random_weights = models, random_weights
        # Tokens learned for the same image and settings are kept between jobs; never from
        # random weights (meaningless), nor when measuring (`costs`).
        self.token_cache = not random_weights
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        use_tensor_cores(self.device)
        if not random_weights:
            check_models(options.preset, models)
        torch.manual_seed(options.seed)
        self.rng = random.Random(options.seed)
        self.pool = PriorPool(models, self.device, random_weights)
        self.object_prompt = f"a {text.PLACEHOLDER}"
        self.motion_prompt = options.prompt or "an object is moving"
        self.prep = self.ref = None
        self.mesh = self.report = None
        # Refine's shading normals and CUDA graphs on this device: a small card's memory
        # changes them (RefineConfig.small_card_gib).
        small = config.refine.small_card(devices.usable_memory(self.device))
        self.refine_normals = (config.refine.small_card_normals if small
                               else config.renderer.normals)
        self.refine_cuda_graphs = config.refine.small_card_cuda_graphs if small else True
        self._scene: stages.Scene | None = None
        self._saved_fields: dict | None = None
        stage_list = [Preprocess(self), TextualInversion(self)]
        if config.static.init == "proxy":
            stage_list.append(Proxy(self))
        self._stages = [*stage_list, Static(self), Dynamic(self), Refine(self), Export(self)]

    @property
    def stages(self):
        return self._stages

    def set_prep(self, prep: dict) -> None:
        """The preprocessed reference view; the reference losses' targets at render size."""
        self.prep = prep
        self.pool.keep()
        s = self.config.renderer.size
        self.ref = stages.Reference(_resize(prep["rgb"], s).to(self.device),
                                    _resize(prep["mask"], s).to(self.device),
                                    _resize(prep["depth"], s).to(self.device))

    def scene(self) -> stages.Scene:
        """The fields, made on first use (after textual inversion, whose seeding comes first)
        and loaded from the job's checkpoint when it has one."""
        if self._scene is None:
            self._scene = job_scene(self.config, self.device, self.options, self._saved_fields)
            self._saved_fields = None
        return self._scene

    def resume(self, checkpoints: Checkpoints) -> tuple[str | None, int]:
        prep, token = checkpoints.get("a124/prep"), checkpoints.get("a124/token")
        fields = checkpoints.get("a124/fields")
        if prep is None:
            return None, 0
        self.set_prep(_torch_load(prep))
        if token is None:
            return "textual_inversion", 0
        self.pool.token = _torch_load(token)  # installed in every SD the pool loads
        if fields is None:
            return self.stages[2].name, 0
        st = _torch_load(fields)
        self._saved_fields = st
        return st["stage"], st["step"]

    def checkpoint(self, stage: str, step: int) -> dict[str, bytes]:
        if stage == "preprocess":
            return {"a124/prep": _torch_bytes(self.prep)}
        if stage == "textual_inversion":
            return {"a124/token": _torch_bytes(self.pool.token)}
        if stage in ("static", "dynamic", "refine"):
            scene = self.scene()
            if not _finite(scene):  # a NaN checkpoint would replace the last good one
                raise _diverged(stage, step, "the fields hold non-finite values")
            return {"a124/fields": fields_checkpoint(scene, stage, step)}
        return {}

    def result(self, timings: dict[str, float]) -> AnimatedMesh:
        mesh = self.mesh
        mesh.metadata["timings"] = timings
        mesh.metadata["export"] = self.report
        mesh.metadata["config"] = as_dict(self.config)
        mesh.metadata["switches"] = switches.active().record()
        mesh.metadata["adjusted"] = self.adjusted()
        return mesh

    def adjusted(self) -> dict[str, object]:
        """The settings this device changed from the config and the switches."""
        out: dict[str, object] = {}
        if self.refine_normals != self.config.renderer.normals:
            out["refine.normals"] = self.refine_normals
        if not self.refine_cuda_graphs and switches.active().cuda_graphs:
            out["refine.cuda_graphs"] = False
        return out


def run_animate124(image, options: JobOptions, progress: ProgressFn = no_progress,
                   checkpoints: Checkpoints | None = None, *, models=None,
                   preset: Animate124Config | None = None, device=None,
                   random_weights: bool = False) -> AnimatedMesh:
    """Run one Animate124 job (the preset's config unless `preset` gives another tree)."""
    from ..jobs.presets import config_for

    config = preset if preset is not None else config_for(options.preset)
    job = Animate124(image, options, config, models=models, device=device,
                     random_weights=random_weights)
    return run_method(job, progress, checkpoints)


__all__ = ["Animate124", "run_animate124", "check_models", "PriorPool"]
