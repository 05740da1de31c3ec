"""Workers under schedulers, as real processes on 127.0.0.1: liveness while a job holds the GIL,
SIGTERM hands the job back, --max-jobs and --exit-when-idle, and `serve --local`'s worker
dying with its server."""

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from animate4d.backend.jobs.checkpoints import MemoryCheckpoints
from animate4d.backend.preview.pipeline import run_preview
from animate4d.backend.server.server import Server
from animate4d.backend.worker.worker import Worker
from animate4d.protocol import wire
from animate4d.protocol.client import Client
from animate4d.protocol.errors import PreemptedError
from animate4d.protocol.options import JobOptions
from tests.backend.cluster import SLOW_WORKER, free_port, wait_until
from tests.backend.test_server import OPTIONS, _progress_until, image_bytes, same_geometry

ROOT = Path(__file__).parents[2]
SMALL = JobOptions(frames=2, mesh_resolution=48)
__all__ = ["image_bytes"]  # the fixture, shared with test_server


def _motion_steps(events) -> list[int]:
    return [b.step for b in events if isinstance(b, wire.Progress) and b.stage == "motion"]


def test_a_job_that_holds_the_gil_keeps_its_worker(cluster, image_bytes):
    """The job thread keeps the GIL for 6 s, twice the time after which a worker without
    heartbeats was taken for dead: its connection stays alive through libzmq's own heartbeats,
    so the one attempt allowed finishes."""
    cluster.start_server("--max-attempts", "1")
    with open(cluster.logs / "gil.log", "wb") as log:
        cluster.workers.append(subprocess.Popen(
            [sys.executable, "-m", "tests.backend.gil_worker", cluster.worker_addr, "6"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    with cluster.client() as c:
        info = c.submit(image_bytes, SMALL)
        final = c.wait(info.id, timeout_s=90)
    assert final.state == wire.DONE, final
    assert final.attempts == 1
    held = re.search(r"held the GIL for ([\d.]+) s; another thread ran (\d+) times",
                     cluster.log("gil"))
    assert held, cluster.log("gil")
    assert float(held[1]) >= 5.9 and int(held[2]) <= 1  # the GIL really was held throughout
    assert "lost" not in cluster.log("server")


def test_sigterm_hands_the_job_back_and_it_resumes_on_another_worker(cluster, image_bytes):
    cluster.start_server()
    w0 = cluster.start_worker(throttle=0.3)
    with cluster.client() as c:
        info = c.submit(image_bytes, OPTIONS)
        before = _progress_until(c, info.id, "motion", 4)
        cluster.start_worker(throttle=0.05)
        wait_until(lambda: "worker w1 joined" in cluster.log("server"), what="w1 to join")
        events, requeued = [], []

        def on_event(job_id, body):
            if isinstance(body, wire.JobState) and body.job.state == wire.QUEUED:
                requeued.append(body)
            (events if requeued else before).append(body)

        w0.send_signal(signal.SIGTERM)
        final = c.wait(info.id, on_event, timeout_s=60)
        assert final.state == wire.DONE, final
        assert requeued  # handed back (the job's log says so, below), not found lost later
        assert final.attempts == 1  # leaving is not a failed attempt
        stopped_at = max(_motion_steps(before))
        resumed = _motion_steps(events)
        # w1 starts at the very frame where w0 stopped (w0 checkpointed its partial block):
        # the last frame w0 reported, or the one after it if w0 had made it meanwhile.
        assert resumed and resumed[0] in (stopped_at, stopped_at + 1), (stopped_at, resumed)
        assert not [b for b in events if isinstance(b, wire.Progress) and b.stage == "load"]
        assert same_geometry(c.fetch_mesh(info.id), run_preview(image_bytes, OPTIONS))
    assert w0.wait(20) == 0
    assert "handed back" in cluster.log("worker0")
    job_log = (cluster.store / "jobs" / info.id / "log.txt").read_text()
    assert "handed back by worker w0 (SIGTERM)" in job_log
    assert "lost" not in cluster.log("server")


def test_max_jobs_then_exit_when_idle(cluster, image_bytes):
    cluster.start_server()
    with cluster.client() as c:
        jobs = [c.submit(image_bytes, SMALL) for _ in range(3)]
        w0 = cluster.start_worker("--max-jobs", "2")
        assert w0.wait(90) == 0
        states = [c.status(j.id) for j in jobs]
        assert sorted(s.state for s in states) == [wire.DONE, wire.DONE, wire.QUEUED], states
        left = next(s for s in states if s.state == wire.QUEUED)
        assert left.attempts == 0  # assigned to the leaving worker or not, it was not tried
        w1 = cluster.start_worker("--exit-when-idle", "2")
        assert c.wait(left.id, timeout_s=60).state == wire.DONE
        assert w1.wait(30) == 0
    assert "ran 2 job(s)" in cluster.log("worker0")
    assert "--exit-when-idle" in cluster.log("worker1")


def test_farm_flags_are_checked(capsys):
    from animate4d.backend.cli import main

    for flag, value in (("--max-jobs", "0"), ("--exit-when-idle", "-1"),
                        ("--stop-timeout", "soon")):
        with pytest.raises(SystemExit) as exit_:
            main(["worker", flag, value])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and flag in err and value in err, err


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not reaped it


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_serve_local_killed_takes_its_worker_with_it(tmp_path, image_bytes):
    addr = f"tcp://127.0.0.1:{free_port()}"
    serve = subprocess.Popen(
        [sys.executable, str(SLOW_WORKER), "0.3", "serve", "--local", "--bind", addr,
         "--workers-bind", f"tcp://127.0.0.1:{free_port()}",
         "--store", str(tmp_path / "s")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = Client(addr, timeout_s=30)
        wait_until(lambda: c.connect().presets == ["preview"], 30, 0.3, "the local worker")
        job = c.submit(image_bytes, OPTIONS)
        wait_until(lambda: c.status(job.id).state == wire.RUNNING, what="the job to run")
        c.close()
        workers = _children(serve.pid)
        assert len(workers) == 1
        serve.kill()  # kill -9: no chance to stop its worker itself
        serve.wait(10)
        wait_until(lambda: not _alive(workers[0]), 20, what="the worker to die with its server")
    finally:
        if serve.poll() is None:
            serve.kill()


def test_a_worker_whose_parent_has_gone_stops():
    """The check behind the kernel's signal (and the only one off Linux)."""
    lines = []
    worker = Worker(f"tcp://127.0.0.1:{free_port()}", pipelines={}, log=lines.append,
                    parent_pid=os.getppid() + 1)
    worker.run()  # returns: no stop event needed
    assert any("has exited" in line for line in lines)


def test_a_worker_leaving_with_no_server_to_answer_still_exits(monkeypatch):
    from animate4d.backend.worker import worker as worker_module

    monkeypatch.setattr(worker_module, "HAND_BACK_ACK_S", 0.3)
    lines = []
    worker = Worker(f"tcp://127.0.0.1:{free_port()}", pipelines={}, log=lines.append,
                    exit_when_idle_s=0.1)
    worker.run()  # returns: nobody listens there, so nobody answers the hand-back
    assert any("--exit-when-idle" in line for line in lines)
    assert any("did not answer" in line for line in lines)


def test_a_hand_back_to_a_server_that_does_not_know_the_worker_is_answered(tmp_path):
    """After a server restart the leaving worker is a stranger: it still gets its answer (the
    restarted server requeued the job already), so it exits at once instead of waiting."""
    caddr, waddr = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    stop, ready = threading.Event(), threading.Event()
    server = Server(tmp_path / "store", caddr, waddr, log=lambda m: None)
    threading.Thread(target=server.run, args=(stop, ready), daemon=True).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        assert ready.wait(10)
        sock.connect(waddr)
        sock.send(wire.encode(wire.HandBack(reason="SIGTERM"), id="bye", job="0" * 32))
        assert sock.poll(10_000)
        env, body = wire.decode(sock.recv())
        assert isinstance(body, wire.Ok) and env.re == "bye"
    finally:
        stop.set()
        sock.close(0)
        ctx.term()


@pytest.mark.parametrize("at", [5, 4])  # 4: just after a block's checkpoint (blocks of 2)
def test_preview_stopped_for_a_hand_back_resumes_at_the_frame_where_it_stopped(image_bytes, at):
    store = MemoryCheckpoints()

    def stopping(stage, step, total):
        if stage == "motion" and step == at:
            raise PreemptedError("the worker is stopping")

    with pytest.raises(PreemptedError):
        run_preview(image_bytes, OPTIONS, stopping, store)
    assert all(len(v) for v in store.values())  # no empty checkpoint (one stalled the resume)
    steps = []
    mesh = run_preview(image_bytes, OPTIONS,
                       lambda s, i, n: steps.append(i) if s == "motion" else None, store)
    assert steps[0] == at  # the frames before it were checkpointed; frame `at` is next
    assert same_geometry(mesh, run_preview(image_bytes, OPTIONS))


def test_a_gpu_worker_tells_the_server_its_gpu_memory_and_a_cpu_worker_does_not_ask(
        monkeypatch):
    from animate4d.backend.worker import worker as worker_mod

    def job(*args):
        raise AssertionError("not run here")

    monkeypatch.setattr(worker_mod.devices, "job_gpu_memory", lambda: 22 * 2**30)
    gpu = Worker("tcp://127.0.0.1:1", pipelines={"fast": job, "preview": job},
                 mesh_pipelines={}, log=lambda m: None)
    assert gpu.gpu_memory == 22 * 2**30

    def never():
        raise AssertionError("a preview-only worker must not start CUDA")

    monkeypatch.setattr(worker_mod.devices, "job_gpu_memory", never)
    cpu = Worker("tcp://127.0.0.1:1", pipelines={"preview": job}, mesh_pipelines={},
                 log=lambda m: None)
    assert cpu.gpu_memory == 0
    sent = []
    monkeypatch.setattr(worker_mod, "_try_send", lambda sock, data: sent.append(data))
    gpu._hello(None)
    _, hello = wire.decode(sent[-1])
    assert isinstance(hello, wire.WorkerHello) and hello.gpu_memory == 22 * 2**30


def test_job_gpu_memory_is_0_without_cuda():
    import torch

    from animate4d.backend.runtime.devices import job_gpu_memory

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert job_gpu_memory() == 0
