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


def available() -> dict[str, JobFn]:
    return {"preview": _preview}
