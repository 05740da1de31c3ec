"""Network benchmarks: many clients against a real server and workers, and result transfer.

`load`: a server and W workers as separate processes; C client threads submit J jobs in all
(tiny images, 2 frames), then wait for every one. Reports jobs per second and the server's own
time per message (from its shutdown log line).
`transfer`: a result of F frames x N vertices travels worker -> server -> client on loopback;
reports each leg's time.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from animate4d.protocol import AnimatedMesh, keys, wire
from animate4d.protocol.client import Client
from animate4d.protocol.limits import MAX_FRAMES, MAX_VERTICES
from animate4d.protocol.options import JobOptions

from . import int_in, report


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_png() -> bytes:
    a = np.zeros((64, 64, 4), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    a[(xx - 32) ** 2 + (yy - 34) ** 2 < 22**2] = (200, 120, 60, 255)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def load(args) -> int:
    """Each client has its own CURVE key, as on a team server: that is what the server's
    per-client fairness and limits are keyed on (all plain loopback clients are one owner)."""
    with tempfile.TemporaryDirectory(prefix="animate4d_bench_",
                                     ignore_cleanup_errors=True) as tmp:
        return _load(args, Path(tmp))


def _load(args, tmp: Path) -> int:
    caddr, waddr = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    py = [sys.executable, "-m", "animate4d.backend"]
    kd = tmp / "keys"
    keys.generate(kd, "server")
    server_key = keys.load_public(kd / "server.key")
    client_pairs = []
    for i in range(args.clients):
        _, secret = keys.generate(kd / "clients", f"c{i}")
        client_pairs.append(keys.load_keypair(secret))
    keys.generate(kd / "admins", "probe")
    with open(tmp / "server.log", "w") as server_log:  # the child keeps its own copy
        server = subprocess.Popen([*py, "serve", "--bind", caddr, "--workers-bind", waddr,
                                   "--store", str(tmp / "store"), "--keys", str(kd)],
                                  stderr=server_log)
    workers = []
    for i in range(args.workers):
        _, secret = keys.generate(kd / "workers", f"w{i}")
        workers.append(subprocess.Popen(
            [*py, "worker", "--server", waddr, "--name", f"w{i}", "--server-key",
             str(kd / "server.key"), "--key", str(secret)], stderr=subprocess.DEVNULL))
    png = _tiny_png()
    opts = JobOptions(frames=2, mesh_resolution=32)
    per_client = [args.jobs // args.clients + (i < args.jobs % args.clients)
                  for i in range(args.clients)]
    submitted: list[list[str]] = [[] for _ in range(args.clients)]
    try:
        probe = Client(caddr, timeout_s=30, server_key=server_key,
                       keypair=keys.load_keypair(kd / "admins" / "probe.key_secret"))
        probe.connect()
        while not probe.welcome.presets:  # wait for the workers to join
            time.sleep(0.2)
            probe.connect()
        t0 = time.perf_counter()

        def session(i: int):
            with Client(caddr, timeout_s=60, server_key=server_key,
                        keypair=client_pairs[i]) as c:
                for k in range(per_client[i]):
                    submitted[i].append(c.submit(png, opts, image_name=f"c{i}-{k}").id)

        threads = [threading.Thread(target=session, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [j for s in submitted for j in s]
        while True:
            infos = {i.id: i for i in probe.list()}
            if all(infos[j].state in wire.FINAL_STATES for j in ids):
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        # Fairness: in the order jobs started, how soon did every client get its first job?
        order = sorted(ids, key=lambda j: infos[j].started)
        owner = {j: i for i, s in enumerate(submitted) for j in s}
        first_round = len({owner[j] for j in order[: args.clients]})
        probe.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        for w in workers:
            w.terminate()
            w.wait(30)
    log_text = (tmp / "server.log").read_text()
    m = re.search(r"handled (\d+) messages in ([\d.]+) s \(([\d.]+) us", log_text)
    result = {
        "benchmark": "load", "clients": args.clients, "jobs": len(ids),
        "workers": args.workers, "done": sum(infos[j].state == wire.DONE for j in ids),
        "unique_ids": len(set(ids)), "attempts_max": max(infos[j].attempts for j in ids),
        "clients_served_in_first_round": first_round,
        "seconds": round(seconds, 2), "jobs_per_s": round(len(ids) / seconds, 2),
        "server_messages": int(m.group(1)) if m else None,
        "server_busy_s": float(m.group(2)) if m else None,
        "server_us_per_message": float(m.group(3)) if m else None,
        "machine": f"{os.cpu_count()} cores",
    }
    return report(result, args.json)


def transfer(args) -> int:
    """Worker and server in threads of this process, client too; real sockets on loopback."""
    with tempfile.TemporaryDirectory(prefix="animate4d_bench_",
                                     ignore_cleanup_errors=True) as tmp:
        return _transfer(args, Path(tmp))


def _transfer(args, tmp: Path) -> int:
    from animate4d.backend.server.server import Server
    from animate4d.backend.worker.worker import Worker

    rng = np.random.default_rng(0)
    n, f = args.vertices, args.frames
    v = rng.normal(size=(n, 3)).astype(np.float32)
    faces = rng.integers(0, n, size=(2 * n, 3)).astype(np.uint32)
    mesh = AnimatedMesh(vertices=v, faces=faces, frames=v[None] + rng.normal(
        scale=0.01, size=(f, n, 3)).astype(np.float32),
        colors=rng.integers(0, 256, (n, 4), dtype=np.uint8))
    marks: dict[str, float] = {}

    def instant(image, options, progress, checkpoints):
        marks["result_ready"] = time.perf_counter()
        return mesh

    caddr, waddr = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    server = Server(tmp / "store", caddr, waddr, log=lambda m: None)
    stop = threading.Event()
    threading.Thread(target=server.run, args=(stop,), daemon=True).start()
    worker = Worker(waddr, pipelines={"preview": instant}, log=lambda m: None)
    threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    try:
        with Client(caddr, timeout_s=30) as c:
            while not c.welcome.presets:
                time.sleep(0.1)
                c.connect()
            job = c.submit(_tiny_png(), JobOptions(frames=2, mesh_resolution=32))
            info = c.wait(job.id, timeout_s=60)
            marks["done"] = time.perf_counter()
            t0 = time.perf_counter()
            data = c.fetch(job.id)
            marks["fetched"] = time.perf_counter()
    finally:
        stop.set()
    upload = marks["done"] - marks["result_ready"]
    fetch = marks["fetched"] - t0
    result = {
        "benchmark": "transfer", "frames": f, "vertices": n, "result_bytes": len(data),
        "state": info.state, "worker_to_server_s": round(upload, 3),
        "server_to_client_s": round(fetch, 3), "total_s": round(upload + fetch, 3),
        "note": "upload includes encoding the .a4d and the server validating it",
    }
    return report(result, args.json)


def add_parsers(sub) -> None:
    p = sub.add_parser("load", help="many clients and jobs against a server and workers",
                       description=__doc__)
    p.add_argument("--clients", type=int_in(1, 1000), default=50)
    p.add_argument("--jobs", type=int_in(1, 100_000), default=200)
    p.add_argument("--workers", type=int_in(1, 64), default=2)
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=load)
    t = sub.add_parser("transfer", help="time a result's trip worker -> server -> client",
                       description=__doc__)
    t.add_argument("--frames", type=int_in(1, MAX_FRAMES), default=24)
    t.add_argument("--vertices", type=int_in(3, MAX_VERTICES), default=50_000)
    t.add_argument("--json", metavar="OUT")
    t.set_defaults(func=transfer)
