"""`animate4d serve` and `animate4d worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from animate4d.protocol import keys
from animate4d.protocol.client import DEFAULT_SERVER

from .args import address, bind_address, positive_float, positive_int, whole_number

DEFAULT_WORKERS = "tcp://127.0.0.1:5556"
# How long `serve --local` waits for its worker to hand its job back: the worker's
# --stop-timeout plus the hand-back's own wait (HAND_BACK_ACK_S) and a margin.
LOCAL_WORKER_STOP_S = 15.0


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "animate4d" / "store"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_serve(args) -> int:
    from ..server.server import CurveConfig, Server

    curve = CurveConfig(Path(args.keys)) if args.keys else None
    server = Server(
        args.store or default_store(), args.bind, args.workers_bind, curve=curve,
        insecure=args.insecure, retention_s=args.retention_days * 86400,
        max_attempts=args.max_attempts,
    )
    stop = _stop_on_signals()
    if not args.local:
        server.run(stop)
        return 0
    # The local worker stops first, so that it can hand its job back to a server still running.
    server_stop = threading.Event()
    local = threading.Thread(target=_supervise_worker, args=(args, stop, server_stop),
                             daemon=True)
    local.start()
    server.run(server_stop)
    local.join(timeout=5)
    return 0


def _worker_command(args) -> list[str]:
    cmd = [sys.executable, "-m", "animate4d.backend", "worker", "--server", args.workers_bind,
           "--exit-with-parent"]
    if args.keys:
        d = Path(args.keys)
        secret = d / "workers" / "local.key_secret"
        if not secret.exists():
            keys.generate(d / "workers", "local")
        cmd += ["--server-key", str(d / "server.key"), "--key", str(secret)]
    return cmd + ["--stop-timeout", "8"]


def _supervise_worker(args, stop: threading.Event, server_stop: threading.Event) -> None:
    """`serve --local`: keep one worker running beside the server until it stops; then stop
    the worker (it hands its job back) and after it the server. The worker dies with this
    process however it ends (`--exit-with-parent`), so a restarted server never finds two."""
    cmd = _worker_command(args)
    try:
        while not stop.is_set():
            # Its own session: a Ctrl-C on the terminal reaches the server alone, which then
            # stops the worker once (a second signal would stop it without the hand-back).
            proc = subprocess.Popen(cmd, start_new_session=True)
            while proc.poll() is None and not stop.is_set():
                time.sleep(0.2)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(LOCAL_WORKER_STOP_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return
            print(f"serve: the local worker exited ({proc.returncode}); starting another",
                  file=sys.stderr, flush=True)
            stop.wait(1.0)
    finally:
        server_stop.set()


def cmd_worker(args) -> int:
    from ..worker.worker import Worker, curve_keys

    server_key, keypair = curve_keys(args.server, args.server_key, args.key, args.insecure)
    from ..jobs.presets import offer

    parent = None
    if args.exit_with_parent:
        from ..worker.parent import die_with_parent

        parent = die_with_parent()
    if args.gpu_memory_gib is not None:  # before any job touches the GPU
        from animate4d.protocol.errors import Animate4DError

        from ..runtime.devices import choose_device, limit_memory

        try:
            device = choose_device("cuda")
        except Animate4DError:
            raise Animate4DError("--gpu-memory-gib: this machine has no CUDA GPU to share",
                                 hint="drop --gpu-memory-gib on a CPU worker") from None
        limit_memory(device, args.gpu_memory_gib, "--gpu-memory-gib")
    pipelines, missing = offer(args.models)
    worker = Worker(args.server, name=args.name, server_key=server_key, keypair=keypair,
                    pipelines=pipelines, missing=missing,
                    max_jobs=args.max_jobs, exit_when_idle_s=args.exit_when_idle,
                    stop_timeout_s=args.stop_timeout, parent_pid=parent)
    worker.run(_leave_on_signals(worker))
    return 0


def _leave_on_signals(worker) -> threading.Event:
    """SIGTERM or SIGINT: hand the job back and exit 0 (what a scheduler's stop expects);
    a second one: stop at once (the server requeues the job when it sees the worker gone)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if worker.leaving:
            stop.set()
        else:
            worker.leave(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the job server (and, with --local, a worker beside it)",
        description="The server: keeps the job store and the queue, routes clients and workers. "
                    "It never runs a job itself; start workers (or use --local).",
    )
    p.add_argument("--bind", default=DEFAULT_SERVER, type=bind_address,
                   help="address for clients, HOST:PORT or tcp://HOST:PORT "
                        "(default: %(default)s)")
    p.add_argument("--workers-bind", default=DEFAULT_WORKERS, type=bind_address,
                   help="address for workers (default: %(default)s)")
    p.add_argument("--store", metavar="DIR",
                   help=f"job store folder (default: {default_store()})")
    p.add_argument("--local", action="store_true",
                   help="also start one worker on this machine and restart it if it dies")
    p.add_argument("--keys", metavar="DIR",
                   help="CURVE: DIR/server.key_secret and the allowed public keys in "
                        "DIR/clients, DIR/admins and DIR/workers (see `animate4d keys`)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without CURVE (trusted networks only)")
    p.add_argument("--retention-days", type=float, default=7.0,
                   help="delete finished jobs after this many days (default: %(default)s)")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="times a job is tried on workers that die before it fails "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    w = sub.add_parser(
        "worker", help="run jobs for a server (one per GPU; any host)",
        description="Connects to a server's worker address and runs one job at a time.",
    )
    w.add_argument("--server", default=DEFAULT_WORKERS, type=address,
                   help="the server's worker address, HOST:PORT or tcp://HOST:PORT "
                        "(default: %(default)s)")
    w.add_argument("--server-key", metavar="FILE", help="the server's public key (CURVE)")
    w.add_argument("--key", metavar="FILE",
                   help="this worker's key pair (.key_secret), allowed in the server's workers/")
    w.add_argument("--name", help="name shown in the server's log (default: host:pid)")
    w.add_argument("--models", metavar="DIR",
                   help="pretrained models (one sub-folder per role): the worker offers the "
                        "fast and paper presets when all are there (default: ANIMATE4D_MODELS)")
    w.add_argument("--insecure", action="store_true",
                   help="connect to a non-loopback server without CURVE")
    w.add_argument("--max-jobs", type=positive_int, metavar="N",
                   help="exit 0 after N jobs have ended on this worker (farm slots)")
    w.add_argument("--exit-when-idle", type=positive_float, metavar="SECONDS",
                   help="exit 0 after SECONDS without a job (since the start or the last job)")
    w.add_argument("--stop-timeout", type=positive_float, default=20.0, metavar="SECONDS",
                   help="on SIGTERM or SIGINT the job stops at its next step, its checkpoint "
                        "is uploaded and it is handed back to the server, which requeues it at "
                        "once; give up waiting for that step after SECONDS and hand it back "
                        "from its earlier checkpoints (default: %(default)s; keep it below "
                        "your scheduler's kill grace period)")
    w.add_argument("--gpu-memory-gib", type=whole_number(1, 1024), metavar="GIB",
                   help="let this worker's jobs use at most GIB of the GPU's memory (workers "
                        "sharing one card: give each its part); the server is told, and sends "
                        "a job that ran out of memory here to a worker with more")
    w.add_argument("--exit-with-parent", action="store_true",
                   help="die when the process that started this worker exits (what `serve "
                        "--local` uses)")
    w.set_defaults(func=cmd_worker)
