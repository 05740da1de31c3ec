"""The preset registry: each preset name maps to its method, its config and the model roles
it needs. The one place that knows which preset runs what; the names themselves are the wire's
vocabulary (`protocol.options.PRESETS`, which clients and Blender need without the backend),
and a test keeps the two the same.

The worker advertises the presets this machine can run (`offer`); `animate4d run` and the
worker build a job with `method_for` (the worker through `job_fn`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions

from .checkpoints import Checkpoints
from .progress import ProgressFn

# The image: its bytes, or preprocess.image_io.ImageFile (bytes and the file's name).
JobFn = Callable[[object, JobOptions, ProgressFn, Checkpoints], AnimatedMesh]
# Mesh mode: the same, given the artist's mesh (wire.MeshInput) instead of an image.
MeshJobFn = Callable[[object, JobOptions, ProgressFn, Checkpoints], AnimatedMesh]


@dataclass(frozen=True)
class PresetSpec:
    """What one preset is."""

    name: str
    """The preset's name on the wire and the command line."""
    method: str
    """The method it runs: 'preview' or 'animate124'."""
    roles: tuple[str, ...]
    """Pretrained model roles it needs (priors.registry.ROLES)."""
    summary: str
    """One line for help texts."""

    def config(self, models=None):
        """The preset's config tree (None for preview, whose settings are the job options).
        On tiny random models (`animate4d models make-tiny`) the sizes follow the models."""
        if self.method != "animate124":
            return None
        from ..pipeline.config import PRESETS, TINY_SIZES, override
        from ..priors.registry import is_tiny

        config = PRESETS[self.name]
        return override(config, TINY_SIZES) if is_tiny(models, self.roles) else config


_A124_ROLES = ("sd", "zero123", "video", "controlnet_tile", "depth")
SPECS: dict[str, PresetSpec] = {s.name: s for s in (
    PresetSpec("preview", "preview", (), "seconds on a CPU, no model weights"),
    PresetSpec("fast", "animate124", _A124_ROLES,
               "Animate124 on a GPU with about a fifth of the paper's steps"),
    PresetSpec("paper", "animate124", _A124_ROLES, "Animate124's published schedule on a GPU"),
)}


def spec(name: str) -> PresetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"no preset {name!r} (presets: {', '.join(SPECS)})") from None


def config_for(name: str, models=None):
    """The config tree of preset `name` on `models` (see PresetSpec.config)."""
    return spec(name).config(models)


def method_for(image, options: JobOptions, *, models=None, config=None, device=None,
               random_weights: bool = False):
    """The Method object of one job (its stages not yet run)."""
    s = spec(options.preset)
    if s.method == "preview":
        from ..preview.pipeline import Preview

        return Preview(image, options, models)
    from ..pipeline.run import Animate124

    return Animate124(image, options, config or s.config(models), models=models,
                      device=device, random_weights=random_weights)


def job_fn(name: str, models=None) -> JobFn:
    """A worker's job function for preset `name`: the method run by the stage runner."""
    from .method import run_method

    def job(image, options: JobOptions, progress: ProgressFn,
            checkpoints: Checkpoints) -> AnimatedMesh:
        return run_method(method_for(image, options, models=models), progress, checkpoints)

    return job


def missing_roles(models=None) -> dict[str, list[str]]:
    """For each preset that needs models, the roles not on this machine (empty: runnable)."""
    needing = {n: s.roles for n, s in SPECS.items() if s.roles}
    if not needing:
        return {}
    from ..priors.registry import available_roles

    have = available_roles(models)
    return {n: [r for r in roles if r not in have] for n, roles in needing.items()}


def offer(models=None) -> tuple[dict[str, JobFn], dict[str, list[str]]]:
    """The presets this machine can run: those needing no models always; the others when
    every role they need is in `models` (default: ANIMATE4D_MODELS) or the Hugging Face
    cache. And, for each preset it cannot run, the roles it lacks (a worker tells the server,
    which tells a client asking for that preset)."""
    out = {n: job_fn(n, models) for n, s in SPECS.items() if not s.roles}
    try:
        lacking_by_preset = missing_roles(models)
    except ImportError:  # the backend without its GPU extras
        return out, {}
    lacking = {}
    for name, roles in lacking_by_preset.items():
        if roles:
            lacking[name] = roles
        else:
            out[name] = job_fn(name, models)
    return out, lacking


def _mesh_preview(mesh, options: JobOptions, progress: ProgressFn,
                  checkpoints: Checkpoints) -> AnimatedMesh:
    from ..meshmode.load import from_wire
    from ..meshmode.preview import run_mesh_preview

    return run_mesh_preview(from_wire(mesh), options, progress)


def mesh_config(name: str, models=None):
    """The config tree of GPU preset `name` in mesh mode (meshmode/animate.py's changes to
    the preset; sizes following tiny random models as `PresetSpec.config`)."""
    from ..meshmode.animate import for_mesh

    return for_mesh(spec(name).config(models))


def mesh_method_for(source, options: JobOptions, *, models=None, config=None, device=None,
                    random_weights: bool = False, pool=None):
    """The Method of a GPU mesh-mode job (meshmode.source.MeshSource in), its stages not yet
    run; `pool`: the priors to use instead of the models' (run.PriorPool's interface)."""
    from ..meshmode.animate import MeshAnimate

    return MeshAnimate(source, options, config or mesh_config(options.preset, models),
                       models=models, device=device, random_weights=random_weights, pool=pool)


def _mesh_job(name: str, models=None) -> MeshJobFn:
    from .method import run_method

    def job(mesh, options: JobOptions, progress: ProgressFn,
            checkpoints: Checkpoints) -> AnimatedMesh:
        from ..meshmode.load import from_wire

        return run_method(mesh_method_for(from_wire(mesh), options, models=models),
                          progress, checkpoints)

    return job


# The model roles the GPU presets' mesh mode needs (meshmode/animate.py: the mesh is the
# geometry, so only the video prior guides). Here, not there: a worker asks at start-up,
# and importing the method (torch and the pipeline) there cost seconds before it joined.
MESH_ROLES = ("video",)


def offer_mesh(models=None) -> dict[str, MeshJobFn]:
    """The presets this machine runs in mesh mode: preview always; the GPU presets when the
    model roles mesh mode needs (MESH_ROLES) are in `models` (default:
    ANIMATE4D_MODELS) or the Hugging Face cache."""
    out: dict[str, MeshJobFn] = {"preview": _mesh_preview}
    try:
        from ..priors.registry import available_roles

        have = available_roles(models)
    except ImportError:  # the backend without its GPU extras
        return out
    if all(r in have for r in MESH_ROLES):
        out.update({n: _mesh_job(n, models) for n, s in SPECS.items() if s.roles})
    return out


def available(models=None) -> dict[str, JobFn]:
    """The presets this machine can run (see `offer`)."""
    return offer(models)[0]
