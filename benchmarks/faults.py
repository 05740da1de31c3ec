"""Faults benchmark: jobs through worker kills, server kills, a full disk, damaged store files
and a slow consumer, with clients attached throughout.

A server and W workers run as separate processes on 127.0.0.1; C client threads each submit J
preview jobs (two at a time, until the faults are over), follow every one to its end and fetch
its result. Meanwhile a fault thread kills
workers (-9, a new one started each time), kills the server (-9, restarted; every other
restart is killed again within a second), fills the disk for a few seconds (the server's
store writes fail with ENOSPC while a flag file exists: see `serve-child`), damages store files
(a byte flipped in a finished result, a garbage job folder, a leftover temporary file) and
opens a slow consumer (150 fetches it never reads).

Prints one JSON object: accepted, done, failed (by reason), lost (accepted, then unknown to the
server), duplicated (jobs on the server no client submitted), hung (a client whose wait did not
return), refused submits (by code), unexpected server exits, server RSS (peak, final).

    .venv/bin/python benchmarks/faults.py --clients 4 --jobs 5 --workers 2 \\
        --worker-kills 6 --server-kills 4
"""

from __future__ import annotations

import argparse
import collections
import errno
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq
from PIL import Image

from animate4d.protocol import a4d, wire
from animate4d.protocol.client import Client, ConnectionLost, ServerError
from animate4d.protocol.options import JobOptions

# Workers whose jobs pause after every step, so that faults land mid-job.
SLOW_WORKER = Path(__file__).parents[1] / "tests" / "backend" / "slow_worker.py"

OPTIONS = JobOptions(prompt="a creature is dancing", frames=6, mesh_resolution=48)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image() -> bytes:
    """An opaque ellipse on a transparent background (a foreground the preview can mesh)."""
    h, w = 140, 120
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - w / 2) / (w * 0.35)) ** 2 + ((yy - h / 2) / (h * 0.4)) ** 2 < 1
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 120, 60
    rgba[..., 3] = inside * 255
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the server, as a child process whose disk can "fill" ----------------------------------
def serve_child(args) -> int:
    """`animate4d serve`, except that every store write fails with ENOSPC while the flag file
    exists (a full disk, without filling a real one)."""
    from animate4d.backend.server import store
    from animate4d.backend.server.server import Server

    flag = Path(args.full_flag)
    real = store.atomic_write

    def write(path, data, *, durable=True):
        if flag.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, durable=durable)

    store.atomic_write = write
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Server(args.store, args.bind, args.workers_bind).run(stop)
    return 0


class Harness:
    def __init__(self, tmp: Path, workers: int, throttle: float):
        self.tmp, self.throttle = tmp, throttle
        self.store = tmp / "store"
        self.flag = tmp / "disk-full"
        self.client_addr = f"tcp://127.0.0.1:{_port()}"
        self.worker_addr = f"tcp://127.0.0.1:{_port()}"
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.n_workers = workers
        self.unexpected_exits = 0
        self.rss_peak = 0
        self.rss_final = 0
        self.lock = threading.Lock()
        self.logs = open(tmp / "processes.log", "ab")  # noqa: SIM115 (closed in stop())

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, __file__, "serve-child", "--store", str(self.store), "--bind",
             self.client_addr, "--workers-bind", self.worker_addr, "--full-flag", str(self.flag)],
            stdout=self.logs, stderr=subprocess.STDOUT)

    def start_worker(self) -> subprocess.Popen:
        w = subprocess.Popen(
            [sys.executable, str(SLOW_WORKER), str(self.throttle), "worker", "--server",
             self.worker_addr], stdout=self.logs, stderr=subprocess.STDOUT)
        self.workers.append(w)
        return w

    def check_server(self) -> None:
        with self.lock:
            if self.server is not None and self.server.poll() is not None:
                self.unexpected_exits += 1
                self.start_server()
            elif self.server is not None:
                self.rss_final = _rss(self.server.pid)
                self.rss_peak = max(self.rss_peak, self.rss_final)

    def kill_server(self) -> None:
        with self.lock:
            if self.server.poll() is not None:
                self.unexpected_exits += 1
            else:
                os.kill(self.server.pid, signal.SIGKILL)
            self.server.wait()
            self.start_server()

    def kill_worker(self, rng: random.Random) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        if alive:
            w = rng.choice(alive)
            os.kill(w.pid, signal.SIGKILL)
            w.wait()
        self.start_worker()

    def stop(self) -> None:
        for p in [*self.workers, self.server]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.server]:
            if p is not None:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.logs.close()


class Outcomes:
    def __init__(self):
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.final: dict[str, str] = {}
        self.refused = collections.Counter()
        self.bad_fetch = 0
        self.followed_later: list[str] = []  # accepted by the fault thread
        self.damaged_result = "not tried"


def _client(h: Harness) -> Client:
    c = Client(h.client_addr, timeout_s=10, reconnect_tries=8)
    for _ in range(60):
        try:
            c.connect()
            return c
        except (ConnectionLost, ServerError):
            time.sleep(0.5)
    raise RuntimeError("the server never answered")


def client_session(h: Harness, out: Outcomes, jobs: int, image: bytes, deadline: float,
                   faults_over: threading.Event) -> None:
    """Submit two jobs, follow both to their end, fetch the results; again, until the faults
    are over and at least `jobs` were accepted."""
    c = _client(h)
    count = 0
    while time.monotonic() < deadline and (count < jobs or not faults_over.is_set()):
        batch = []
        while len(batch) < 2 and time.monotonic() < deadline:
            try:
                batch.append(c.submit(image, OPTIONS).id)
            except ServerError as e:
                with out.lock:
                    out.refused[e.code] += 1
                time.sleep(1.0)
            except ConnectionLost:
                with out.lock:
                    out.refused["connection_lost"] += 1
                c = _client(h)
        count += len(batch)
        with out.lock:
            out.accepted.extend(batch)
        for job in batch:
            state, c = _follow(h, c, job, out, deadline)
            with out.lock:
                out.final[job] = state
    c.close()


def _follow(h: Harness, c: Client, job: str, out: Outcomes, deadline: float):
    """The job's end as one word ('done' once its result is fetched and loads)."""
    while time.monotonic() < deadline:
        try:
            info = c.wait(job, timeout_s=max(1.0, deadline - time.monotonic()))
            if info.state == wire.DONE:
                state = _fetch(c, job, out)
                if state is not None:
                    return state, c
            elif info.state in wire.FINAL_STATES:
                return (info.state if info.state != wire.FAILED
                        else f"failed:{info.error_code}"), c
        except ServerError as e:
            if e.code == "not_found":
                return "lost", c
            time.sleep(0.5)
        except ConnectionLost:
            c = _client(h)
    return "unfinished", c


def _fetch(c: Client, job: str, out: Outcomes) -> str | None:
    """'done' once its result is fetched whole and loads; None to wait again (the result was
    found damaged and is being computed again)."""
    try:
        a4d.loads(c.fetch(job))
        return wire.DONE
    except ServerError as e:
        if e.code == "result_damaged":
            return None
        raise
    except ConnectionLost:
        with out.lock:
            out.bad_fetch += 1
        return None


def faults(h: Harness, args, rng: random.Random, stop: threading.Event, log,
           out: Outcomes) -> None:
    """The fault schedule, spread over the first `args.fault_s` seconds."""
    events = (["worker"] * args.worker_kills + ["server"] * args.server_kills
              + ["disk", "damage", "slow"])
    rng.shuffle(events)
    gap = args.fault_s / max(1, len(events))
    quick = 0
    for what in events:
        if stop.wait(gap):
            return
        h.check_server()
        if what == "worker":
            h.kill_worker(rng)
            log("killed a worker")
        elif what == "server":
            h.kill_server()
            log("killed the server")
            if quick % 2 == 0:  # killed again within a second of its restart
                time.sleep(rng.uniform(0.2, 0.9))
                h.kill_server()
                log("killed the server again within 1 s")
            quick += 1
        elif what == "disk":
            h.flag.touch()
            log("disk full")
            full_disk_submits(h, out, args.disk_full_s)
            h.flag.unlink()
            log("disk has room again")
        elif what == "damage":
            job = damage(h.store, rng)
            log("damaged store files")
            if job is not None:
                fetch_damaged(h, out, job)
                log(f"the damaged result: {out.damaged_result}")
        elif what == "slow":
            slow_consumer(h)
            log("slow consumer")


def full_disk_submits(h: Harness, out: Outcomes, seconds: float) -> None:
    """A submit every half second while the disk is full: each must be refused, clearly."""
    c = _client(h)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            job = c.submit(_image(), OPTIONS).id
            with out.lock:
                out.accepted.append(job)
                out.followed_later.append(job)
        except ServerError as e:
            with out.lock:
                out.refused[e.code] += 1
        except ConnectionLost:
            c = _client(h)
        time.sleep(0.5)
    c.close()


def fetch_damaged(h: Harness, out: Outcomes, job: str) -> None:
    """Fetch the result just damaged: refused (`result_damaged`), computed again, then whole."""
    c = _client(h)
    try:
        c.fetch(job)
        out.damaged_result = "served!"
    except ServerError as e:
        out.damaged_result = e.code
    except ConnectionLost:
        out.damaged_result = "connection_lost"
    state, c = _follow(h, c, job, out, time.monotonic() + 120)
    out.damaged_result += f", then {state}"
    c.close()


def damage(store: Path, rng: random.Random) -> str | None:
    """A byte flipped in a finished result (its job id is returned), a job folder holding
    garbage, a temporary file left by a crash."""
    jobs = store / "jobs"
    done = [d for d in jobs.iterdir() if (d / "result.a4d").exists()] if jobs.exists() else []
    if done:
        path = rng.choice(done) / "result.a4d"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    garbage = jobs / ("f" * 32)
    garbage.mkdir(parents=True, exist_ok=True)
    (garbage / "job.json").write_bytes(b"\x00garbage{")
    if done:
        (rng.choice(done) / "result.a4d.crash.tmp").write_bytes(b"\x00" * 4096)
        return path.parent.name
    return None


def slow_consumer(h: Harness) -> None:
    """150 fetches of a finished job, replies never read, then it goes away."""
    c = _client(h)
    done = [j.id for j in c.list() if j.state == wire.DONE]
    c.close()
    if not done:
        return
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(h.client_addr)
    for i in range(150):
        s.send(wire.encode(wire.Fetch(offset=0), job=done[0], id=f"slow{i}"))
    time.sleep(3.0)
    s.close(0)


def run(args) -> int:
    rng = random.Random(args.seed)
    image = _image()
    with tempfile.TemporaryDirectory(prefix="a4d-faults-") as tmp:
        h = Harness(Path(tmp), args.workers, args.throttle)
        h.start_server()
        for _ in range(args.workers):
            h.start_worker()
        out = Outcomes()
        t0 = time.monotonic()
        lines = []

        def log(what: str) -> None:
            lines.append(f"{time.monotonic() - t0:6.1f} s  {what}")
            if args.verbose:
                print(lines[-1], file=sys.stderr, flush=True)

        stop = threading.Event()
        deadline = t0 + args.deadline_s
        faults_over = threading.Event()
        clients = [threading.Thread(target=client_session,
                                    args=(h, out, args.jobs, image, deadline, faults_over),
                                    daemon=True)
                   for _ in range(args.clients)]
        for t in clients:
            t.start()
        def chaos_then_done():
            faults(h, args, rng, stop, log, out)
            c = _client(h)
            for job in out.followed_later:
                out.final[job], c = _follow(h, c, job, out, deadline)
            faults_over.set()

        chaos = threading.Thread(target=chaos_then_done, daemon=True)
        chaos.start()
        while any(t.is_alive() for t in clients) and time.monotonic() < deadline + 60:
            h.check_server()
            time.sleep(0.5)
        stop.set()
        chaos.join(30)
        hung = sum(t.is_alive() for t in clients)
        h.check_server()
        c = _client(h)
        on_server = {j.id for j in c.list()} - {"f" * 32}
        c.close()
        elapsed = time.monotonic() - t0
        h.stop()
        text = (h.tmp / "processes.log").read_text(errors="replace")
        server_log = {what: text.count(what) for what in (
            "Traceback", "a write failed", "writes succeed again", "could not be stored",
            "does not match the checksum", "unreadable job.json", "lost:")}

    finals = collections.Counter(out.final.values())
    accepted = set(out.accepted)
    report = {
        "accepted": len(accepted),
        "done": finals.get(wire.DONE, 0),
        "failed": {k.split(":", 1)[1]: v for k, v in finals.items() if k.startswith("failed:")},
        "cancelled": finals.get(wire.CANCELLED, 0),
        "lost": finals.get("lost", 0) + len(accepted - on_server),
        "duplicated": len(out.accepted) - len(accepted) + len(on_server - accepted),
        "hung": hung,
        "unfinished": finals.get("unfinished", 0),  # still queued or running at the deadline
        "refused_submits": dict(out.refused),
        "damaged_result": out.damaged_result,
        "server_unexpected_exits": h.unexpected_exits,
        "server_log": server_log,
        "server_rss_mib": {"peak": round(h.rss_peak / 2**20, 1),
                           "final": round(h.rss_final / 2**20, 1)},
        "faults": {"worker_kills": args.worker_kills,
                   "server_kills": args.server_kills + (args.server_kills + 1) // 2,
                   "of_which_within_1s_of_a_restart": (args.server_kills + 1) // 2,
                   "disk_full_s": args.disk_full_s, "damaged_store": 1, "slow_consumers": 1},
        "clients": args.clients, "jobs_per_client": args.jobs, "workers": args.workers,
        "seconds": round(elapsed, 1),
        "schedule": lines,
    }
    print(json.dumps(report, indent=1))
    ok = (report["lost"] == 0 and report["duplicated"] == 0 and report["hung"] == 0
          and h.unexpected_exits == 0)
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    child = sub.add_parser("serve-child")
    child.add_argument("--store", required=True)
    child.add_argument("--bind", required=True)
    child.add_argument("--workers-bind", required=True)
    child.add_argument("--full-flag", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=5,
                   help="jobs per client at least (they go on until the faults are over)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-kills", type=int, default=6)
    p.add_argument("--server-kills", type=int, default=4)
    p.add_argument("--disk-full-s", type=float, default=4.0)
    p.add_argument("--fault-s", type=float, default=60.0,
                   help="faults are spread over this many seconds")
    p.add_argument("--deadline-s", type=float, default=600.0,
                   help="a client still waiting after this is counted as hung")
    p.add_argument("--throttle", type=float, default=0.1,
                   help="workers pause this long after each progress step (longer jobs, so "
                        "that kills land mid-job)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "serve-child":
        return serve_child(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
