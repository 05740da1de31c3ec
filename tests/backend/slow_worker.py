"""`python tests/backend/slow_worker.py SECONDS worker ARGS...`: `animate4d worker ARGS` whose
jobs pause SECONDS after every progress step, so that a network test can watch, cancel or
kill a job while it runs (a preview job alone takes about a second). The pause is a test's
pipeline, injected here, not a switch of the product's worker."""

from __future__ import annotations

import sys
import time

from animate4d.backend import cli
from animate4d.backend.jobs import presets as pipelines


def slowed(fn, pause: float):
    """The job `fn` with a pause after each of its progress reports. A cancel takes effect
    at the next report, as in any pipeline."""

    def job(image, options, progress, checkpoints):
        def report_then_pause(stage: str, step: int, total: int) -> None:
            progress(stage, step, total)
            time.sleep(pause)

        return fn(image, options, report_then_pause, checkpoints)

    return job


def main(argv: list[str]) -> int:
    pause, args = float(argv[0]), argv[1:]
    offer = pipelines.offer

    def slow_offer(models=None):
        fns, missing = offer(models)
        return {preset: slowed(fn, pause) for preset, fn in fns.items()}, missing

    pipelines.offer = slow_offer  # what `animate4d worker` offers the server
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
