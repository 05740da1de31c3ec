"""Which pipeline runs which preset. The worker advertises the keys; the GPU pipeline adds
"fast" and "paper" here when its weights are present."""

from __future__ import annotations

from collections.abc import Callable

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions

from .checkpoints import Checkpoints
from .progress import ProgressFn

JobFn = Callable[[bytes, JobOptions, ProgressFn, Checkpoints], AnimatedMesh]


def _preview(models):
    def job(image: bytes, options: JobOptions, progress: ProgressFn,
            checkpoints: Checkpoints) -> AnimatedMesh:
        from .preview.pipeline import run_preview

        return run_preview(image, options, progress, checkpoints, models=models)

    return job


def _animate124(models):
    def job(image: bytes, options: JobOptions, progress: ProgressFn,
            checkpoints: Checkpoints) -> AnimatedMesh:
        from .pipeline.run import run_animate124

        return run_animate124(image, options, progress, checkpoints, models=models)

    return job


def offer(models=None) -> tuple[dict[str, JobFn], dict[str, list[str]]]:
    """The pipelines this machine can run: preview always; fast and paper when every role they
    need is in `models` (default: ANIMATE4D_MODELS) or the Hugging Face cache. And, for each
    GPU preset it cannot run, the roles it lacks (a worker tells the server, which tells a
    client asking for that preset)."""
    out: dict[str, JobFn] = {"preview": _preview(models)}
    try:
        from .priors.registry import missing_roles
    except ImportError:  # the backend without its GPU extras
        return out, {}
    lacking = {}
    for preset, roles in missing_roles(models).items():
        if roles:
            lacking[preset] = roles
        else:
            out[preset] = _animate124(models)
    return out, lacking


def available(models=None) -> dict[str, JobFn]:
    """The presets this machine can run (see `offer`)."""
    return offer(models)[0]
