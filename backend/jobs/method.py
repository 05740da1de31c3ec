"""A method is an ordered list of stages; one runner drives every method.

The runner owns what every job needs whatever its method: where a resumed job starts, when
checkpoints are written (also at the step reached when a stopping worker preempts the job),
progress (and so cancel: the progress callback raises), and the timings. A stage owns its
work: set-up (loading priors, say), one step at a time, and release (what it held, before the
next stage loads its own). A method owns its state: what a
checkpoint holds after a stage's step, where an earlier attempt's checkpoints let it resume,
and the result at the end.

Preview mode and Animate124 are both written this way; the worker, `animate4d run` and the
benchmarks drive the same objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from animate4d.protocol import AnimatedMesh
from animate4d.protocol.errors import PreemptedError

from ..runtime import devices
from .checkpoints import Checkpoints, NoCheckpoints
from .progress import ProgressFn, Stopwatch, no_progress


class Stage:
    """One stage: `steps` steps, `setup` before the first step this attempt runs, `release`
    after the last. `checkpoint_every` > 0 asks the runner for a checkpoint every that many
    steps (and always at the stage's end)."""

    name: str = "stage"
    steps: int = 1
    checkpoint_every: int = 0

    def setup(self, start: int) -> bool | None:
        """Prepare to run from step `start` (0, or where an earlier attempt stopped). False:
        nothing to run (the work was found done, e.g. in a cache); the stage still ends with
        its checkpoint."""

    @abstractmethod
    def step(self, step: int) -> None:
        """Step number `step` of `steps`."""

    def release(self) -> None:
        """Drop what the stage held (its priors, graphs, optimiser)."""


class Method(ABC):
    """What a preset runs: its stages in order, its state and its result."""

    name: str = "method"

    @property
    @abstractmethod
    def stages(self) -> Sequence[Stage]:
        """The stages, in the order they run."""

    @abstractmethod
    def resume(self, checkpoints: Checkpoints) -> tuple[str | None, int]:
        """Load what earlier attempts left; returns (stage, steps of it done), or (None, 0)
        to start from the beginning. Stages before the returned one are skipped."""

    @abstractmethod
    def checkpoint(self, stage: str, step: int) -> dict[str, bytes]:
        """The checkpoint blobs to write after `step` steps of `stage` (may be empty; may
        raise when the state is not worth keeping, e.g. DivergedError)."""

    @abstractmethod
    def result(self, timings: dict[str, float]) -> AnimatedMesh:
        """The finished job's mesh, with `timings` (seconds per stage) in its metadata."""


def _raise_if_out_of_gpu_memory(error: Exception, where: str) -> None:
    """Raise `error` as OutOfGpuMemoryError if it is torch running out of GPU memory
    (`where`: "in the refine stage at step 3 of 5000"); otherwise return."""
    said = devices.out_of_memory(error, where)
    if said is not None:
        raise said from error


def run_method(method: Method, progress: ProgressFn = no_progress,
               checkpoints: Checkpoints | None = None) -> AnimatedMesh:
    """Run `method`'s stages from where its checkpoints let it resume, and return its result."""
    checkpoints = NoCheckpoints() if checkpoints is None else checkpoints
    clock = Stopwatch()
    stages = list(method.stages)
    names = [s.name for s in stages]
    try:
        done_stage, done_step = method.resume(checkpoints)
    except Exception as e:
        _raise_if_out_of_gpu_memory(e, "while loading the job's checkpoints")
        raise
    first = names.index(done_stage) if done_stage is not None else 0

    def save(stage: str, step: int) -> None:
        for key, blob in method.checkpoint(stage, step).items():
            checkpoints.put(key, blob)

    for index in range(first, len(stages)):
        stage = stages[index]
        start = done_step if index == first and done_stage is not None else 0
        saved = start  # the step the stage's latest checkpoint holds
        total = stage.steps
        if start >= total:
            continue
        step = None  # in the set-up
        with clock.stage(stage.name):
            try:
                ran = stage.setup(start) is not False
                step = start
                for step in range(start, total if ran else start):
                    try:
                        progress(stage.name, step, total)
                    except PreemptedError:  # the worker is stopping: resume exactly here
                        if step > saved:
                            save(stage.name, step)
                        raise
                    stage.step(step)
                    every = stage.checkpoint_every
                    if every > 0 and (step + 1) % every == 0 and step + 1 < total:
                        save(stage.name, step + 1)
                        saved = step + 1
                save(stage.name, total)
                progress(stage.name, total, total)
            except Exception as e:
                _raise_if_out_of_gpu_memory(
                    e, f"in the {stage.name} stage while setting it up" if step is None
                    else f"in the {stage.name} stage at step {step} of {total}")
                raise
            finally:
                stage.release()
    return method.result(clock.seconds)
