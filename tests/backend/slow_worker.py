"""`python tests/backend/slow_worker.py SECONDS worker ARGS...`: `animate4d worker ARGS` whose
jobs pause SECONDS after every progress step, so that a network test can watch, cancel or
kill a job while it runs (a preview job alone takes about a second). `... SECONDS serve --local
ARGS...` starts its local worker this way too; `SlowWorkerActor` is the Ray actor's
counterpart. The pause is a test's pipeline, injected here, not a switch of the product."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from animate4d.backend import cli
from animate4d.backend.commands import serve
from animate4d.backend.jobs import presets as pipelines
from animate4d.backend.worker.ray_actor import WorkerActor


def slowed(fn, pause: float):
    """The job `fn` with a pause after each of its progress reports. A cancel or a stop takes
    effect at the next report, as in any pipeline."""

    def job(image, options, progress, checkpoints):
        def report_then_pause(stage: str, step: int, total: int) -> None:
            progress(stage, step, total)
            time.sleep(pause)

        return fn(image, options, report_then_pause, checkpoints)

    return job


def slow_offer(pause: float, offer=pipelines.offer):
    def offer_slowed(models=None):
        fns, missing = offer(models)
        return {preset: slowed(fn, pause) for preset, fn in fns.items()}, missing

    return offer_slowed


class SlowWorkerActor(WorkerActor):
    """A Ray worker actor whose jobs pause `pause` seconds after every progress step."""

    def __init__(self, server: str, *, pause: float, **kw):
        self.pause = pause
        super().__init__(server, **kw)

    def offer(self, models):
        return slow_offer(self.pause)(models)


def main(argv: list[str]) -> int:
    pause, args = float(argv[0]), argv[1:]
    pipelines.offer = slow_offer(pause)  # what `animate4d worker` offers the server
    worker_command = serve._worker_command

    def slow_local_worker(parsed) -> list[str]:  # `serve --local`'s worker
        cmd = worker_command(parsed)
        return [cmd[0], str(Path(__file__).resolve()), str(pause), *cmd[3:]]

    serve._worker_command = slow_local_worker
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
