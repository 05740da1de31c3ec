"""Faults of the disk, the store and the network, each reproduced: the server keeps
serving, nothing accepted is lost, no client hangs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import zmq

from animate4d.backend.server import store as store_mod
from animate4d.backend.server.store import JobRecord, JobStore
from animate4d.protocol import keys, wire
from animate4d.protocol.client import Client, ServerError
from animate4d.protocol.options import JobOptions
from animate4d.protocol.text import printable
from tests.backend.cluster import Cluster, wait_until
from tests.backend.fakes import FakeWorker, ThreadServer, result_bytes
from tests.backend.test_server_hostile import _keys, rss_bytes
from tests.conftest import blob_rgba, write_png

OPTIONS = JobOptions(prompt="a creature is dancing", frames=3, mesh_resolution=48)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return write_png(tmp_path_factory.mktemp("img") / "c.png", blob_rgba(120, 140)).read_bytes()


@pytest.fixture
def threaded(tmp_path):
    servers = []

    def make(store=None, **kw):
        s = ThreadServer(store if store is not None else tmp_path / "store", **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        if s.alive:
            s.stop()


def _client(addr: str) -> Client:
    c = Client(addr, timeout_s=10)
    c.connect()
    return c


# -- 1: the disk fills -------------------------------------------------------------------
@pytest.fixture
def disk(monkeypatch):
    """Every atomic write of the store fails with ENOSPC while `disk["full"]`."""
    state = {"full": False}
    real = store_mod.atomic_write

    def write(path, data, *, durable=True):
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, durable=durable)

    monkeypatch.setattr(store_mod, "atomic_write", write)
    return state


def test_a_full_disk_refuses_new_jobs_keeps_accepted_ones_and_recovers(threaded, disk, png):
    srv = threaded()
    worker = FakeWorker(srv.worker_addr)
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    job_id, _ = worker.take()
    disk["full"] = True
    worker.upload(job_id, result_bytes())  # storing the result fails: the job waits, not lost
    wait_until(lambda: c.status(job_id).state == wire.QUEUED, what="the job back in the queue")
    with pytest.raises(ServerError) as err:
        c.submit(png, OPTIONS)
    assert err.value.code == "storage_full" and "disk is full" in str(err.value)
    assert any("a write failed" in line for line in srv.lines)

    srv.restart()  # a start on the full disk
    assert srv.alive
    worker.close()
    worker = FakeWorker(srv.worker_addr)
    c = _client(srv.client_addr)
    info = c.status(job_id)
    assert info.state == wire.QUEUED and info.attempts == 0, info  # not the job's fault

    disk["full"] = False  # room again: the job runs and finishes
    got, _ = worker.take()
    assert got == job_id
    worker.upload(job_id, result_bytes())
    assert c.wait(job_id, timeout_s=20).state == wire.DONE
    assert c.fetch(job.id) == result_bytes()
    assert c.submit(png, OPTIONS).state in (wire.QUEUED, wire.RUNNING)
    c.close()
    worker.close()


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="cannot mount a small filesystem here")
def test_a_real_small_filesystem_fills_and_the_server_restarts_on_it(tmp_path):
    """A 2 MiB tmpfs (in a private mount namespace) as the store: submits until it is full,
    the server killed -9 and restarted on the full disk, then room made by deleting a job."""
    cluster = Cluster(tmp_path / "store")
    cluster.store.mkdir()
    serve = [sys.executable, "-m", "animate4d.backend", "serve", "--bind", cluster.client_addr,
             "--workers-bind", cluster.worker_addr, "--store", str(cluster.store)]
    # The shell keeps the namespace (and its tmpfs) and restarts the server when it dies.
    script = (f"mount -t tmpfs -o size=2m tmpfs {cluster.store} || exit 9; "
              f"while :; do {' '.join(serve)} 2>>{tmp_path}/server.log & echo $! > "
              f"{tmp_path}/pid; wait $!; sleep 0.2; done")
    shell = subprocess.Popen(["unshare", "-rm", "sh", "-c", script])
    rng = __import__("numpy").random.default_rng(0)
    noise = write_png(tmp_path / "n.png", rng.integers(0, 255, (300, 300, 4), "uint8"))
    image = noise.read_bytes()  # ~350 KB that does not compress
    try:
        c = Client(cluster.client_addr, timeout_s=10)
        wait_until(lambda: _connects(c), 30, 0.3, "the server")
        accepted = []
        for _ in range(20):
            try:
                accepted.append(c.submit(image, OPTIONS).id)
            except ServerError as e:
                assert e.code == "storage_full", e
                break
        else:
            raise AssertionError("the 2 MiB store never filled")
        assert accepted
        pid = int((tmp_path / "pid").read_text())
        os.kill(pid, 9)
        wait_until(lambda: (tmp_path / "pid").read_text().strip() != str(pid), 20,
                   what="a restart")
        c2 = Client(cluster.client_addr, timeout_s=10)
        wait_until(lambda: _connects(c2), 30, 0.3, "the restarted server")
        states = {j.id: j.state for j in c2.list()}
        assert all(states.get(j) == wire.QUEUED for j in accepted), states
        c2.delete(accepted[0])
        wait_until(lambda: _submits(c2, image), 20, 0.5, "a submit once there is room")
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log, log
    finally:
        shell.kill()  # first the loop that restarts it, then the server it started
        shell.wait(10)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp_path / "pid").read_text()), 9)


def _connects(c: Client) -> bool:
    try:
        c.connect()
        return True
    except Exception:
        return False


def _submits(c: Client, image: bytes) -> bool:
    try:
        c.submit(image, OPTIONS)
        return True
    except ServerError as e:
        assert e.code == "storage_full"
        return False


# -- 2: the store folder is removed ------------------------------------------------------
def test_the_store_folder_removed_under_a_running_server(cluster, png):
    cluster.start_server()
    with cluster.client() as c:
        lost = c.submit(png, OPTIONS)
        shutil.rmtree(cluster.store)
        wait_until(lambda: (cluster.store / "jobs").is_dir(), what="the store made again")
        assert cluster.server.poll() is None
        assert c.status(lost.id).state == wire.QUEUED  # the record is written back
        kept = c.submit(png, OPTIONS)
        cluster.start_worker()
        gone = c.wait(lost.id, timeout_s=60)
        assert gone.state == wire.FAILED and gone.error_code == "store_damaged", gone
        assert "input image is gone" in gone.error_message
        assert c.wait(kept.id, timeout_s=60).state == wire.DONE
    assert cluster.server.poll() is None
    assert "Traceback" not in cluster.log("server")
    assert "has disappeared" in cluster.log("server")


# -- 3: damaged job records --------------------------------------------------------------
def _record(job_id: str, owner: str = "local") -> JobRecord:
    return JobRecord(info=wire.JobInfo(id=job_id, state=wire.QUEUED, preset="preview",
                                       prompt="p", created=time.time()),
                     owner=owner, options=OPTIONS, image_name="c.png")


def test_damaged_job_records_are_quarantined_and_the_server_starts(cluster, png):
    store = JobStore(cluster.store)
    good, truncated, garbage, escape, twin_a, twin_b = (f"{i:032x}" for i in range(1, 7))
    for job_id in (good, truncated, garbage, escape, twin_a, twin_b):
        store.create(_record(job_id), png)
    jobs = cluster.store / "jobs"
    (jobs / truncated / "job.json").write_bytes((jobs / truncated / "job.json").read_bytes()[:40])
    (jobs / garbage / "job.json").write_bytes(b"\x00\xff garbage")
    rec = _record(escape)
    rec.info.id = "../../etc"
    (jobs / escape / "job.json").write_bytes(msgspec.json.encode(rec))
    rec = _record(twin_a)  # two folders whose records name one id
    (jobs / twin_b / "job.json").write_bytes(msgspec.json.encode(rec))
    (jobs / "not a job!").mkdir()

    cluster.start_server()
    with cluster.client() as c:
        states = {j.id: (j.state, j.error_code) for j in c.list()}
    assert states[good] == (wire.QUEUED, None)
    for damaged in (truncated, garbage):
        assert states[damaged] == (wire.FAILED, "store_damaged")
        assert (jobs / damaged / "job.json.damaged").exists()
    assert states[escape] == (wire.QUEUED, None)  # the folder's name is the id
    assert states[twin_a] == states[twin_b] == (wire.QUEUED, None)
    assert not (jobs / "not a job!").exists()
    assert list((cluster.store / "quarantine").iterdir())
    log = cluster.log("server")
    assert "Traceback" not in log and "unreadable job.json" in log and "not a job folder" in log
    assert cluster.server.poll() is None


# -- 5: a quick server restart under a waiting client ------------------------------------
def test_a_client_waiting_through_a_quick_server_restart_learns_the_end(threaded, png):
    """The server is back before the client misses a pong: the client must still learn that
    the new server does not know its attachment, and hear the job end."""
    srv = threaded()
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(info=c.wait(job.id)), daemon=True)
    waiter.start()
    time.sleep(1.0)
    srv.restart()  # well within the client's 3 s of silence
    time.sleep(2.0)
    worker = FakeWorker(srv.worker_addr)
    job_id, _ = worker.take()
    worker.upload(job_id, result_bytes())
    waiter.join(30)
    assert not waiter.is_alive(), "the client hangs"
    assert result["info"].state == wire.DONE
    c.close()
    worker.close()


def test_a_client_polling_in_short_windows_keeps_the_servers_attention(threaded, png):
    """The Blender extension reads events 0.2 s at a time: its pings must still go out every
    heartbeat, or the server forgets its attachments (after 10 of its heartbeats, 2 s here)."""
    srv = threaded()
    c = _client(srv.client_addr)
    c.submit(png, OPTIONS)
    end = time.monotonic() + 2.6  # past the server's 2 s, before the client's own 3 s
    while time.monotonic() < end:
        list(c.events(timeout_s=0.2))
    assert any(srv.server.subscribers.values())
    assert len(srv.server.greeted) == 1
    c.close()


def test_wait_with_a_timeout_returns_at_the_timeout(cluster, png):
    cluster.start_server()  # no worker: the job stays queued
    with cluster.client() as c:
        job = c.submit(png, OPTIONS)
        t0 = time.monotonic()
        info = c.wait(job.id, timeout_s=2)
        assert info.state == wire.QUEUED
        assert time.monotonic() - t0 < 10  # returned, where it used to wait for ever


# -- 6: a slow consumer and oversized options --------------------------------------------
def test_a_slow_consumer_does_not_grow_the_server(cluster, png):
    cluster.start_server()
    worker = FakeWorker(cluster.worker_addr)
    big = result_bytes(frames=120, vertices=3000)  # ~4.3 MB: two chunks
    with cluster.client() as c:
        job = c.submit(png, OPTIONS)
        job_id, _ = worker.take()
        worker.upload(job_id, big)
        assert c.wait(job.id, timeout_s=20).state == wire.DONE
        before = rss_bytes(cluster.server.pid)
        slow = zmq.Context.instance().socket(zmq.DEALER)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.setsockopt(zmq.RCVBUF, 4096)
        slow.setsockopt(zmq.LINGER, 0)
        slow.connect(cluster.client_addr)
        for i in range(150):  # and never read a reply
            slow.send(wire.encode(wire.Fetch(offset=0), job=job.id, id=f"f{i}"))
        time.sleep(3)
        c.status(job.id)  # the server has gone through them
        grown = rss_bytes(cluster.server.pid) - before
        assert grown < 100 * 2**20, f"server grew by {grown / 2**20:.0f} MiB"
        assert c.fetch(job.id) == big  # a client that reads is served as ever
        slow.close(0)
    worker.close()


def test_options_are_checked_against_the_limits_without_echoing_them(cluster, png):
    cluster.start_server()
    with cluster.client() as c:
        camera = {"matrix_world": [[1, 0, 0, 0]] * 4, "resolution": [120, 140],
                  "junk": "x" * (100 * 1024)}
        with pytest.raises(Exception) as err:
            c.submit(png, JobOptions(camera=camera))
        assert getattr(err.value, "code", "") == "bad_request" and "camera" in str(err.value)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(cluster.client_addr)
        raw.send(msgspec.msgpack.encode({"v": 1, "type": "submit", "id": "s1", "body": {
            "image": png, "options": {"camera": camera}}}))
        assert raw.poll(10000)
        env, body = wire.decode(raw.recv())
        assert isinstance(body, wire.Error) and body.code == "bad_request"
        assert len(body.message) < 500
        raw.send(msgspec.msgpack.encode({"v": 1, "type": "submit", "id": "s2", "body": {
            "image": png, "options": {"preset": "p" * 100_000}}}))
        assert raw.poll(10000)
        env, body = wire.decode(raw.recv())
        assert body.code == "bad_request" and len(body.message) < 500
        raw.close(0)
        assert c.list() == []


# -- 7: keys removed from the allowed folders --------------------------------------------
def test_a_removed_key_and_a_demoted_admin_lose_access_on_a_live_connection(tmp_path, png):
    d = _keys(tmp_path)
    cluster = Cluster(tmp_path / "store", keys=d)
    try:
        cluster.start_server()
        server_key = keys.load_public(d / "server.key")

        def client(name):
            return cluster.client(server_key=server_key,
                                  keypair=keys.load_keypair(d / "issued" / f"{name}.key_secret"))

        bob, root, alice = client("bob"), client("root"), client("alice")
        job = bob.submit(png, OPTIONS)
        assert job.id in [j.id for j in root.list()]
        time.sleep(0.05)  # a new mtime for the folders below
        (d / "clients" / "alice.key").unlink()
        with pytest.raises(ServerError) as err:
            alice.list()
        assert err.value.code == "not_allowed"
        os.replace(d / "admins" / "root.key", d / "clients" / "root.key")
        assert job.id not in [j.id for j in root.list()]
        with pytest.raises(ServerError) as err:
            root.status(job.id)
        assert err.value.code == "not_found"
        assert bob.status(job.id).state == wire.QUEUED
        for c in (alice, bob, root):
            c.close()
    finally:
        cluster.stop()


# -- 8: control characters in what the CLI prints ----------------------------------------
HOSTILE = "dance\x1b]0;owned\x07\x1b[31mred\x00\u202etxt.exe\u2066"


def test_the_cli_escapes_control_characters(cluster, png):
    cluster.start_server()
    with cluster.client() as c:
        job = c.submit(png, JobOptions(prompt=HOSTILE, frames=3, mesh_resolution=48))
    for args in (["status", job.id], ["status"]):
        r = subprocess.run([sys.executable, "-m", "animate4d.backend", *args, "--server",
                            cluster.client_addr], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for bad in ("\x1b", "\x07", "\x00", "\u202e", "\u2066"):
            assert bad not in r.stdout + r.stderr
        assert "\\x1b]0;owned" in r.stdout and "\\u202e" in r.stdout


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable("a cat, 猫 — déjà vu") == "a cat, 猫 — déjà vu"
    assert printable("a\x1b[2Jb\nc\u200fd\\") == "a\\x1b[2Jb\\x0ac\\u200fd\\\\"
    assert printable("x" * 50, limit=10) == "x" * 10 + "..."


# -- 9 and the missing-result code: a result damaged on disk -----------------------------
def test_a_result_damaged_on_disk_is_never_served_and_is_computed_again(cluster, png):
    cluster.start_server()
    data = result_bytes(frames=5, vertices=50)
    worker = FakeWorker(cluster.worker_addr)
    with cluster.client() as c:
        job = c.submit(png, OPTIONS)
        job_id, _ = worker.take()
        worker.upload(job_id, data)
        assert c.wait(job.id, timeout_s=20).state == wire.DONE
    worker.close()
    cluster.kill(cluster.server)
    path = cluster.store / "jobs" / job.id / "result.a4d"
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    cluster.start_server()
    worker = FakeWorker(cluster.worker_addr)
    with cluster.client() as c:
        with pytest.raises(ServerError) as err:
            c.fetch(job.id)
        assert err.value.code == "result_damaged"
        assert c.status(job.id).state in (wire.QUEUED, wire.RUNNING)
        got, _ = worker.take()
        assert got == job.id
        worker.upload(job.id, data)
        assert c.wait(job.id, timeout_s=20).state == wire.DONE
        assert c.fetch(job.id) == data
        path.unlink()  # a missing result: the same, never `internal`
        with pytest.raises(ServerError) as err:
            c.fetch(job.id)
        assert err.value.code == "result_damaged"
    worker.close()
    assert "Traceback" not in cluster.log("server")


# -- 10: leftovers of interrupted writes and partial uploads -----------------------------
def test_leftover_temporary_files_are_removed_at_start(tmp_path, png):
    store = JobStore(tmp_path / "store")
    job_id = "ab" * 16
    store.create(_record(job_id), png)
    d = tmp_path / "store" / "jobs" / job_id
    (d / "result.a4d.x1y2z3.tmp").write_bytes(b"\x00" * 1000)
    (d / "checkpoints" / "motion-0.q8w7.tmp").write_bytes(b"half")
    (d / "checkpoints" / "motion-0").write_bytes(b"whole")
    assert store.checkpoint_keys(job_id) == ["motion-0"]
    records, problems = JobStore(tmp_path / "store").load_all()
    assert [r.info.id for r in records] == [job_id] and not problems
    assert not list(d.rglob("*.tmp"))


def test_partial_uploads_are_freed_when_the_job_ends(threaded, png):
    srv = threaded()
    worker = FakeWorker(srv.worker_addr)
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    job_id, _ = worker.take()
    big = os.urandom(6 * 2**20)
    worker.upload(job_id, big, key="motion-0", upto=1)  # the first of two chunks only
    wait_until(lambda: srv.server.uploads, what="the partial upload")
    worker.send(wire.Failed(code="diverged", message="lost its scene"), job=job_id)
    assert c.wait(job.id, timeout_s=20).state == wire.FAILED
    assert not srv.server.uploads
    c.close()
    worker.close()


# -- Also: what counts as an attempt --------------------------------------------------------
def test_server_restarts_and_dead_workers_are_not_counted_as_attempts(threaded, png):
    srv = threaded(max_attempts=1, dead_after_s=1.0)
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    for _ in range(2):  # taken, then the server restarts under it, twice
        worker = FakeWorker(srv.worker_addr)
        worker.take()
        srv.restart()
        worker.close()
        c = _client(srv.client_addr)
        info = c.status(job.id)
        assert info.state == wire.QUEUED and info.attempts == 0, info
    # A worker that says hello and dies before it is given the job: not an attempt either.
    silent = FakeWorker(srv.worker_addr, beat=False)
    silent.recv(skip=(wire.Heartbeat,))  # the hello's `ok`
    env, _ = silent.recv()
    assert env.job == job.id
    silent.close()
    wait_until(lambda: c.status(job.id).state == wire.QUEUED, what="the job requeued")
    assert c.status(job.id).attempts == 0
    # A worker that took it and then died: that one counts (and --max-attempts 1 ends it).
    worker = FakeWorker(srv.worker_addr)
    worker.take()
    time.sleep(0.3)
    worker.close()
    final = c.wait(job.id, timeout_s=20)
    assert final.state == wire.FAILED and final.error_code == "worker_lost", final
    c.close()


def test_the_accepted_reply_comes_before_the_jobs_events(threaded, png):
    srv = threaded()
    worker = FakeWorker(srv.worker_addr)  # idle: the job is dispatched at once
    wait_until(lambda: srv.server.workers, what="the worker")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.client_addr)
    raw.send(wire.encode(wire.Submit(image=png, options=OPTIONS), id="s1"))
    assert raw.poll(10000)
    env, body = wire.decode(raw.recv())
    assert isinstance(body, wire.Accepted) and env.re == "s1", body
    env, body = wire.decode(raw.recv())
    assert isinstance(body, wire.JobState) and body.job.state == wire.RUNNING
    raw.close(0)
    worker.close()


# -- Also: a worker's GPU runs out of memory ------------------------------------------------
GIB = 2**30


def _ran_out(worker: FakeWorker, job_id: str) -> None:
    worker.send(wire.Failed(code="gpu_memory", message="the GPU ran out of memory in the "
                            "refine stage at step 3 of 5000"), job=job_id)


def test_a_job_that_runs_out_of_gpu_memory_goes_to_a_worker_with_more(threaded, png):
    srv = threaded()
    small = FakeWorker(srv.worker_addr, "small", gpu_memory=22 * GIB)
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    job_id, _ = small.take()
    big = FakeWorker(srv.worker_addr, "big", gpu_memory=80 * GIB)
    wait_until(lambda: len(srv.server.workers) == 2, what="both workers")
    _ran_out(small, job_id)
    got, assign = big.take()  # resumed there, from the checkpoints it has
    assert got == job_id and assign.attempt == 1  # the small card's try is not counted
    with pytest.raises(AssertionError, match="sent nothing"):
        small.recv(timeout=1.0)  # never back to the card it did not fit
    assert any("out of GPU memory on worker small (22.0 GiB)" in line for line in srv.lines)
    big.upload(job_id, result_bytes())
    assert c.wait(job.id, timeout_s=20).state == wire.DONE
    assert srv.server.jobs[job_id].needs_gpu_memory == 22 * GIB  # kept in its record
    c.close()
    small.close()
    big.close()


def test_out_of_gpu_memory_with_no_bigger_worker_fails_with_the_workers_message(threaded,
                                                                                 png):
    srv = threaded()
    only = FakeWorker(srv.worker_addr, "only", gpu_memory=22 * GIB)
    same = FakeWorker(srv.worker_addr, "same", gpu_memory=22 * GIB)  # no more: no help
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    wait_until(lambda: len(srv.server.workers) == 2, what="both workers")
    taker = None
    for w in (only, same):
        with contextlib.suppress(AssertionError):
            taker = (w, w.take(timeout=3.0)[0])
            break
    assert taker is not None
    _ran_out(*taker)
    final = c.wait(job.id, timeout_s=20)
    assert final.state == wire.FAILED and final.error_code == "gpu_memory", final
    assert "refine stage at step 3" in final.error_message
    c.close()
    only.close()
    same.close()


def test_a_job_waiting_for_a_bigger_worker_that_left_fails_with_its_message(threaded, png):
    srv = threaded(stranded_s=1.0)
    small = FakeWorker(srv.worker_addr, "small", gpu_memory=22 * GIB)
    c = _client(srv.client_addr)
    job = c.submit(png, OPTIONS)
    job_id, _ = small.take()
    # Within GPU_MEMORY_MARGIN of the small card: not worth a retry, so not taken.
    near = FakeWorker(srv.worker_addr, "near", gpu_memory=23 * GIB)
    big = FakeWorker(srv.worker_addr, "big", gpu_memory=80 * GIB)
    wait_until(lambda: len(srv.server.workers) == 3, what="three workers")
    _ran_out(small, job_id)
    got, _ = big.take()
    assert got == job_id
    big.close()  # gone with the job: requeued, and now no worker has enough memory
    final = c.wait(job.id, timeout_s=30)
    assert final.state == wire.FAILED and final.error_code == "gpu_memory", final
    assert "refine stage at step 3 of 5000" in final.error_message
    assert "no worker with more GPU memory" in final.error_message
    with pytest.raises(AssertionError, match="sent nothing"):
        near.recv(timeout=0.5)
    c.close()
    small.close()
    near.close()


# -- Also: the loopback check and key files ------------------------------------------------
@pytest.mark.parametrize("address,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/a4d", True),
    ("tcp://127.evil.example:5555", False), ("tcp://127.0.0.1.evil.example:5555", False),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.0.2.1:5555", False),
    ("tcp://[::ffff:8.8.8.8]:5555", False), ("udp://127.0.0.1:1", False),
])
def test_loopback_compares_addresses_not_strings(address, local):
    assert keys.is_loopback(address) is local


def test_secret_key_files_are_private_from_the_start(tmp_path, monkeypatch):
    def no_chmod(*a, **k):
        raise AssertionError("a secret key file was made with wider permissions first")

    monkeypatch.setattr(os, "chmod", no_chmod)
    old = os.umask(0)
    try:
        public, secret = keys.generate(tmp_path, "server")
    finally:
        os.umask(old)
    assert oct(os.stat(secret).st_mode & 0o777) == "0o600"
    assert keys.load_keypair(secret)[0] == keys.load_public(public)
    with pytest.raises(keys.KeyFileError):
        keys.generate(tmp_path, "server")
