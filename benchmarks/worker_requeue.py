"""How soon a running job is back in the queue when its worker goes: kill -9 (the server sees
the connection close) and SIGTERM (the worker hands the job back). Real server and worker
processes on 127.0.0.1, a preview job throttled to 0.3 s a step, N times each:

    .venv/bin/python benchmarks/worker_requeue.py [N]

Prints the seconds from the signal to the job's `queued` state, and its attempts after.
"""

import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from animate4d.protocol import wire  # noqa: E402
from animate4d.protocol.options import JobOptions  # noqa: E402
from tests.backend.cluster import Cluster, wait_until  # noqa: E402
from tests.conftest import blob_rgba, write_png  # noqa: E402


def _once(store: Path, how: str, image: bytes, options: JobOptions) -> tuple[float, int]:
    cluster = Cluster(store)
    try:
        cluster.start_server()
        worker = cluster.start_worker(throttle=0.3)
        with cluster.client() as c:
            job = c.submit(image, options)
            wait_until(lambda: c.status(job.id).stage == "motion", 60)
            t0 = time.monotonic()
            if how == "kill -9":
                cluster.kill(worker)
            else:
                worker.send_signal(signal.SIGTERM)
            wait_until(lambda: c.status(job.id).state == wire.QUEUED, 30, 0.01)
            return time.monotonic() - t0, c.status(job.id).attempts
    finally:
        cluster.stop()


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        image = write_png(tmp / "c.png", blob_rgba(200, 240)).read_bytes()
        options = JobOptions(prompt="a dance", frames=24, mesh_resolution=64)
        for k, how in enumerate(("kill -9", "SIGTERM")):
            runs = [_once(tmp / f"store{k}-{i}", how, image, options) for i in range(n)]
            print(f"{how:8s} requeued after (s): {' '.join(f'{s:.2f}' for s, _ in runs)}; "
                  f"attempts then: {runs[-1][1]}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
