"""Server, workers and clients as real processes on 127.0.0.1: jobs, faults and cancels."""

import subprocess
import sys
import time

import numpy as np
import pytest

from animate4d.backend.preview.pipeline import run_preview
from animate4d.protocol import wire
from animate4d.protocol.client import ServerError
from animate4d.protocol.options import JobOptions
from tests.backend.cluster import Cluster, wait_until
from tests.conftest import blob_rgba, write_png

OPTIONS = JobOptions(prompt="a creature is dancing", frames=12, mesh_resolution=96)


@pytest.fixture(scope="module")
def image_bytes(tmp_path_factory):
    return write_png(tmp_path_factory.mktemp("img") / "c.png", blob_rgba(200, 240)).read_bytes()


def same_geometry(a, b) -> bool:
    return all(np.array_equal(getattr(a, n), getattr(b, n))
               for n in ("vertices", "faces", "frames", "colors", "transform"))


def test_end_to_end_equals_a_local_run(cluster, image_bytes):
    cluster.start_server()
    cluster.start_worker()
    with cluster.client() as c:
        assert c.welcome.protocol == wire.PROTOCOL_VERSION
        info = c.submit(image_bytes, OPTIONS, image_name="c.png")
        assert info.state in (wire.QUEUED, wire.RUNNING)
        events = []
        final = c.wait(info.id, lambda j, b: events.append(b), timeout_s=60)
        assert final.state == wire.DONE, final
        assert "motion" in [getattr(b, "stage", None) for b in events]
        previews = [b for b in events if isinstance(b, wire.Preview)]
        assert previews and previews[0].png.startswith(b"\x89PNG")
        mesh = c.fetch_mesh(info.id)
    local = run_preview(image_bytes, OPTIONS)
    assert same_geometry(mesh, local)
    assert mesh.metadata["prompt"] == OPTIONS.prompt


def _progress_until(c, job_id, stage, step, timeout=30):
    """Follow the job's events until `stage` reaches `step`; returns the events seen."""
    seen = []
    end = time.monotonic() + timeout
    c.attach(job_id)
    while time.monotonic() < end:
        for jid, body in c.events(timeout_s=1.0):
            if jid == job_id:
                seen.append(body)
                if isinstance(body, wire.Progress) and body.stage == stage and body.step >= step:
                    return seen
    raise AssertionError(f"never reached {stage} {step}: {seen[-3:]}")


def test_killed_worker_job_resumes_on_a_new_worker_from_its_checkpoint(cluster, image_bytes):
    cluster.start_server()
    w0 = cluster.start_worker(throttle=0.15)
    with cluster.client() as c:
        info = c.submit(image_bytes, OPTIONS)
        _progress_until(c, info.id, "motion", 8)
        cluster.kill(w0)  # kill -9 mid-motion; blocks of 2 frames are checkpointed
        cluster.start_worker(throttle=0.05)
        resumed = []
        final = c.wait(info.id, lambda j, b: resumed.append(b), timeout_s=60)
        assert final.state == wire.DONE, final
        assert final.attempts == 2
        motion = [b.step for b in resumed if isinstance(b, wire.Progress) and b.stage == "motion"]
        assert motion and motion[0] >= 6, motion  # the resumed stage did not start from zero
        assert not [b for b in resumed if isinstance(b, wire.Progress) and b.stage == "load"]
        mesh = c.fetch_mesh(info.id)
    assert same_geometry(mesh, run_preview(image_bytes, OPTIONS))


def test_a_client_that_goes_away_does_not_stop_its_job(cluster, image_bytes, tmp_path):
    cluster.start_server()
    cluster.start_worker(throttle=0.1)
    png = tmp_path / "c.png"
    png.write_bytes(image_bytes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "animate4d.backend", "submit", str(png), "--prompt", "a dance",
         "--frames", "12", "--mesh-resolution", "96", "--wait", "--server", cluster.client_addr],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with cluster.client() as c:
        job = wait_until(lambda: [j for j in c.list() if j.state == wire.RUNNING],
                         what="the job to run")[0]
        time.sleep(0.5)
        cluster.kill(proc)
        final = c.wait(job.id, timeout_s=60)  # attach by id from another client
        assert final.state == wire.DONE
        assert c.fetch_mesh(job.id).num_frames == 12
    out = subprocess.run(
        [sys.executable, "-m", "animate4d.backend", "fetch", job.id, "--out",
         str(tmp_path / "o"), "--server", cluster.client_addr], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o" / "result.glb").exists()


def test_a_restarted_server_finishes_the_job(cluster, image_bytes):
    cluster.start_server()
    cluster.start_worker(throttle=0.15)
    with cluster.client() as c:
        info = c.submit(image_bytes, OPTIONS)
        _progress_until(c, info.id, "motion", 4)
    cluster.kill(cluster.server)
    cluster.start_server()
    with cluster.client() as c:
        assert c.status(info.id).state in (wire.QUEUED, wire.RUNNING)
        final = c.wait(info.id, timeout_s=60)
        assert final.state == wire.DONE, final
        assert same_geometry(c.fetch_mesh(info.id), run_preview(image_bytes, OPTIONS))
    assert "requeued" in (cluster.store / "jobs" / info.id / "log.txt").read_text()


def test_cancel_stops_the_worker_at_its_next_step(cluster, image_bytes):
    """No clock: each step takes 0.3 s, so a worker that stops at the step after the cancel
    (at most one more report, the one in flight) stops well within a second; one that ignored
    the cancel would go on to step 12."""
    cluster.start_server()
    cluster.start_worker(throttle=0.3)
    with cluster.client() as c:
        info = c.submit(image_bytes, OPTIONS)
        seen = _progress_until(c, info.id, "motion", 2)
        last_before = max(b.step for b in seen
                          if isinstance(b, wire.Progress) and b.stage == "motion")
        c.cancel(info.id)
        after = []
        final = c.wait(info.id, lambda j, b: after.append(b), timeout_s=10)
        assert final.state == wire.CANCELLED
        later = [b.step for b in after if isinstance(b, wire.Progress) and b.stage == "motion"]
        assert all(step <= last_before + 1 for step in later), (last_before, later)
        with pytest.raises(ServerError) as err:
            c.fetch(info.id)
        assert err.value.code == "not_ready"
        # The worker is free again: the next job runs.
        nxt = c.submit(image_bytes, JobOptions(frames=2, mesh_resolution=48))
        assert c.wait(nxt.id, timeout_s=60).state == wire.DONE


def test_queued_job_cancels_at_once_and_bad_jobs_fail_cleanly(cluster, image_bytes):
    cluster.start_server()  # no worker yet: jobs stay queued
    with cluster.client() as c:
        a = c.submit(image_bytes, OPTIONS)
        b = c.submit(image_bytes, OPTIONS)
        assert c.status(b.id).queue_position == 1
        assert c.cancel(a.id).state == wire.CANCELLED
        assert c.status(b.id).queue_position == 0
        with pytest.raises(ServerError) as err:
            c.submit(b"not an image", OPTIONS)
        assert err.value.code == "bad_image"
        with pytest.raises(ServerError) as err:
            c.status("no-such-job-id")
        assert err.value.code == "not_found"
        # An image that passes the header check but has no object fails on the worker.
        from tests.backend.test_cli import _png_bytes

        empty = c.submit(_png_bytes(64, 64, (0, 0, 0, 0)), JobOptions(), image_name="empty.png")
        cluster.start_worker()
        final = c.wait(empty.id, timeout_s=60)
        assert final.state == wire.FAILED and final.error_code == "bad_image"
        assert final.error_message.startswith("empty.png: no foreground"), final.error_message
        assert c.wait(b.id, timeout_s=60).state == wire.DONE
        c.delete(b.id)
        assert b.id not in [j.id for j in c.list()]


def test_cli_contract(cluster, image_bytes, tmp_path):
    """The exact spellings scripts rely on: submit's last line is the job id, status's first
    line is the state word."""
    cluster.start_server()
    cluster.start_worker()
    png = tmp_path / "c.png"
    png.write_bytes(image_bytes)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "animate4d.backend", *args,
                               "--server", cluster.client_addr, "--timeout", "30"],
                              capture_output=True, text=True, timeout=120)

    sub = cli("submit", str(png), "--prompt", "a dance", "--frames", "4",
              "--mesh-resolution", "64")
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().splitlines()[-1]
    assert len(job) == 32 and all(ch in "0123456789abcdef" for ch in job)  # safe in argv
    att = cli("attach", job, "--quiet")
    assert att.returncode == 0 and att.stdout.strip() == "done"
    st = cli("status", job)
    assert st.stdout.splitlines()[0] == "done"
    gone = cli("status", "nonexistent-job-id")
    assert gone.returncode == 2 and "no job" in gone.stderr
    down = subprocess.run([sys.executable, "-m", "animate4d.backend", "status", "--server",
                           "tcp://127.0.0.1:1", "--timeout", "1"], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 4 and "serve" in down.stderr


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(tmp_path, image_bytes):
    cluster = Cluster(tmp_path / "store")
    try:
        cluster.start_server("--max-attempts", "2")
        with cluster.client() as c:
            info = c.submit(image_bytes, OPTIONS)
            for attempt in (1, 2):
                w = cluster.start_worker(throttle=0.2)
                # Begun: the worker has reported (a worker that never answered after being
                # given the job may have been dead before it, and is not counted).
                wait_until(lambda a=attempt: (i := c.status(info.id)).attempts == a
                           and i.state == wire.RUNNING and i.stage is not None, what="a run")
                cluster.kill(w)
            final = c.wait(info.id, timeout_s=30)
            assert final.state == wire.FAILED and final.error_code == "worker_lost"
            assert "2 attempts" in final.error_message
    finally:
        cluster.stop()


def test_serve_local_runs_jobs_with_its_own_worker(tmp_path, image_bytes):
    from tests.backend.cluster import free_port

    addr = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "animate4d.backend", "serve", "--local", "--bind", addr,
         "--workers-bind", f"tcp://127.0.0.1:{free_port()}", "--store", str(tmp_path / "s")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from animate4d.protocol.client import Client

        c = Client(addr, timeout_s=30)
        wait_until(lambda: c.connect().presets == ["preview"], 30, 0.3, "the local worker")
        job = c.submit(image_bytes, JobOptions(frames=3, mesh_resolution=48))
        assert c.wait(job.id, timeout_s=60).state == wire.DONE
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0  # a clean stop: the worker is stopped with it


def test_a_preset_no_worker_can_run_is_refused_with_what_is_missing(cluster, image_bytes,
                                                                     tmp_path, monkeypatch):
    """A worker without weights says which models it lacks; the server names them to a client
    asking for `paper`, keeps what it already accepted, and still runs previews."""
    monkeypatch.setenv("ANIMATE4D_MODELS", str(tmp_path / "no-models"))  # the worker inherits
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paper = JobOptions(prompt="a creature is dancing", preset="paper")
    cluster.start_server()
    with cluster.client() as c:
        early = c.submit(image_bytes, paper)  # no worker has spoken yet: it waits
        cluster.start_worker()
        wait_until(lambda: "worker w0 joined" in cluster.log("server"), what="worker hello")
        with pytest.raises(ServerError) as err:
            c.submit(image_bytes, paper)
        assert err.value.code == "missing_model"
        message = str(err.value)
        for words in ("paper", "w0 lacks", "video", "zero123", "animate4d models fetch"):
            assert words in message
        preview = c.submit(image_bytes, OPTIONS)
        assert c.wait(preview.id, timeout_s=60).state == wire.DONE
        assert c.status(early.id).state == wire.QUEUED  # accepted before: kept, not dropped
