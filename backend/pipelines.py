"""Which pipeline runs which preset. The worker advertises the keys; the GPU pipeline adds
"fast" and "paper" here when its weights are present."""

from __future__ import annotations

from collections.abc import Callable

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.options import JobOptions

from .checkpoints import Checkpoints
from .progress import ProgressFn

JobFn = Callable[[bytes, JobOptions, ProgressFn, Checkpoints], AnimatedMesh]


def _preview(image: bytes, options: JobOptions, progress: ProgressFn,
             checkpoints: Checkpoints) -> AnimatedMesh:
    from .preview.pipeline import run_preview

    return run_preview(image, options, progress, checkpoints)


def _animate124(models):
    def job(image: bytes, options: JobOptions, progress: ProgressFn,
            checkpoints: Checkpoints) -> AnimatedMesh:
        from .pipeline.run import run_animate124

        return run_animate124(image, options, progress, checkpoints, models=models)

    return job


def available(models=None) -> dict[str, JobFn]:
    """preview always; fast and paper when every role they need is in `models` (default:
    ANIMATE4D_MODELS) or the Hugging Face cache."""
    out: dict[str, JobFn] = {"preview": _preview}
    try:
        from .priors.registry import runnable_presets
    except ImportError:  # the backend without its GPU extras
        return out
    for preset in runnable_presets(models):
        out[preset] = _animate124(models)
    return out
