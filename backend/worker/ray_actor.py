"""Workers as Ray actors (docs/DEPLOY.md): Ray supplies the machines and the GPUs and restarts
a worker that dies; the animate4d server stays the control plane (queue, keys, checkpoints,
progress to Blender).

    import ray
    from animate4d.backend.worker.ray_actor import start_workers, stop_workers

    ray.init(address="auto")
    actors = start_workers("tcp://jobs.example:5556", 8, num_gpus=1, models="/models",
                           server_key="/keys/server.key", key="/keys/ray.key_secret")
    ...
    stop_workers(actors)  # each hands its job back, then the actor ends

Each actor runs one `Worker` in a thread of its own process, on the GPU that Ray gave it
(CUDA_VISIBLE_DEVICES). An actor that dies (its process killed, its node lost) is restarted by
Ray (`max_restarts=-1`); the server saw its connection close and requeued its job, which
resumes from its checkpoints on whichever worker takes it next.
"""

from __future__ import annotations

import os
import threading

from ..jobs.presets import offer
from .worker import Worker, curve_keys


class WorkerActor:
    """One worker per actor; Ray makes it remote (`start_workers`)."""

    def __init__(self, server: str, name: str | None = None, models: str | None = None,
                 server_key: str | None = None, key: str | None = None,
                 insecure: bool = False):
        server_public, keypair = curve_keys(server, server_key, key, insecure)
        pipelines, missing = self.offer(models)
        self.worker = Worker(server, name=name, server_key=server_public, keypair=keypair,
                             pipelines=pipelines, missing=missing)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,),
                                        name="animate4d-worker", daemon=True)
        self._thread.start()

    def offer(self, models: str | None):
        """The presets this actor runs and those it lacks models for (a subclass may wrap
        the jobs, as the tests' slowed actor does)."""
        return offer(models)

    def pid(self) -> int:
        return os.getpid()

    def running(self) -> str | None:
        """The job this worker holds, if any."""
        job = self.worker.job
        return job.job_id if job is not None else None

    def leave(self, timeout_s: float = 60.0) -> bool:
        """Hand the job back at its next step and stop the worker; True once it has."""
        self.worker.leave("asked to leave by Ray")
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def start_workers(server: str, count: int, *, num_gpus: float = 1, num_cpus: float = 1,
                  name_prefix: str = "ray", actor: type = WorkerActor, **worker_kw) -> list:
    """Start `count` restartable worker actors (`actor`, WorkerActor or a subclass of it) on
    the connected Ray cluster. `worker_kw`: `models`, `server_key`, `key` (paths on the
    nodes), `insecure`."""
    import ray

    cls = ray.remote(actor).options(num_gpus=num_gpus, num_cpus=num_cpus,
                                          max_restarts=-1, max_task_retries=0)
    return [cls.remote(server, name=f"{name_prefix}-{i}", **worker_kw) for i in range(count)]


def stop_workers(actors: list, timeout_s: float = 60.0) -> None:
    """Scale down: each worker hands its job back, then its actor ends (and is not restarted)."""
    import ray

    ray.get([a.leave.remote(timeout_s) for a in actors])
    for a in actors:
        ray.kill(a, no_restart=True)
