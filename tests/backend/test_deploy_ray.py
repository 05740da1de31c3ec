"""docs/DEPLOY.md's Ray recipe end to end: workers as restartable actors on a local Ray, one
killed mid-job; the job still completes, once."""

from pathlib import Path

import pytest

from animate4d.backend.preview.pipeline import run_preview
from animate4d.protocol import wire
from tests.backend.cluster import wait_until
from tests.backend.test_server import OPTIONS, _progress_until, image_bytes, same_geometry

ray = pytest.importorskip("ray")

ROOT = Path(__file__).parents[2]
__all__ = ["image_bytes"]  # the fixture, shared with test_server


@pytest.fixture
def local_ray(tmp_path_factory):
    # The actors import the tests' slowed actor from this checkout.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


def test_a_ray_actor_killed_mid_job_the_job_completes_once(cluster, image_bytes, local_ray):
    from animate4d.backend.worker.ray_actor import start_workers, stop_workers

    cluster.start_server()
    from tests.backend.slow_worker import SlowWorkerActor

    (actor,) = start_workers(cluster.worker_addr, 1, num_gpus=0, num_cpus=0,
                             actor=SlowWorkerActor, pause=0.15)
    with cluster.client() as c:
        info = c.submit(image_bytes, OPTIONS)
        _progress_until(c, info.id, "motion", 4, timeout=90)
        first_pid = ray.get(actor.pid.remote())
        assert ray.get(actor.running.remote()) == info.id
        ray.kill(actor, no_restart=False)  # as a crash or a lost node: Ray restarts the actor
        final = c.wait(info.id, timeout_s=90)
        assert final.state == wire.DONE, final
        assert final.attempts == 2
        assert [j.id for j in c.list()] == [info.id]
        assert same_geometry(c.fetch_mesh(info.id), run_preview(image_bytes, OPTIONS))
    assert ray.get(actor.pid.remote()) != first_pid  # the restarted actor, now idle
    job_log = (cluster.store / "jobs" / info.id / "log.txt").read_text()
    assert job_log.count("done") == 1 and "requeued" in job_log
    stop_workers([actor])
    wait_until(lambda: "left (asked to leave by Ray)" in cluster.log("server"),
               what="the actor's worker to leave")
