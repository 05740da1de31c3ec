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

DEFAULT_WORKERS = "tcp://127.0.0.1:5556"


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
    local = None
    if args.local:
        local = threading.Thread(target=_supervise_worker, args=(args, stop), daemon=True)
        local.start()
    server.run(stop)
    if local is not None:
        local.join(timeout=5)
    return 0


def _worker_command(args) -> list[str]:
    cmd = [sys.executable, "-m", "animate4d.backend", "worker", "--server", args.workers_bind]
    if args.keys:
        d = Path(args.keys)
        secret = d / "workers" / "local.key_secret"
        if not secret.exists():
            keys.generate(d / "workers", "local")
        cmd += ["--server-key", str(d / "server.key"), "--key", str(secret)]
    return cmd


def _supervise_worker(args, stop: threading.Event) -> None:
    """`serve --local`: keep one worker running beside the server until it stops."""
    cmd = _worker_command(args)
    while not stop.is_set():
        proc = subprocess.Popen(cmd)
        while proc.poll() is None and not stop.is_set():
            time.sleep(0.2)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
            return
        print(f"serve: the local worker exited ({proc.returncode}); starting another",
              file=sys.stderr, flush=True)
        stop.wait(1.0)


def cmd_worker(args) -> int:
    from ..worker.worker import Worker

    server_key, keypair = keys.load_curve_files(args.server_key, args.key)
    if server_key is None and not keys.is_loopback(args.server) and not args.insecure:
        raise keys.KeyFileError(
            f"{args.server} is not on this machine, and no keys were given",
            hint="pass --server-key and --key (see `animate4d keys`), or --insecure")
    from ..jobs.presets import offer

    pipelines, missing = offer(args.models)
    worker = Worker(args.server, name=args.name, server_key=server_key, keypair=keypair,
                    pipelines=pipelines, missing=missing)
    worker.run(_stop_on_signals())
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the job server (and, with --local, a worker beside it)",
        description="The server: keeps the job store and the queue, routes clients and workers. "
                    "It never runs a job itself; start workers (or use --local).",
    )
    p.add_argument("--bind", default=DEFAULT_SERVER,
                   help="address for clients (default: %(default)s)")
    p.add_argument("--workers-bind", default=DEFAULT_WORKERS,
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
    w.add_argument("--server", default=DEFAULT_WORKERS,
                   help="the server's worker address (default: %(default)s)")
    w.add_argument("--server-key", metavar="FILE", help="the server's public key (CURVE)")
    w.add_argument("--key", metavar="FILE",
                   help="this worker's key pair (.key_secret), allowed in the server's workers/")
    w.add_argument("--name", help="name shown in the server's log (default: host:pid)")
    w.add_argument("--models", metavar="DIR",
                   help="pretrained models (one sub-folder per role): the worker offers the "
                        "fast and paper presets when all are there (default: ANIMATE4D_MODELS)")
    w.add_argument("--insecure", action="store_true",
                   help="connect to a non-loopback server without CURVE")
    w.set_defaults(func=cmd_worker)
