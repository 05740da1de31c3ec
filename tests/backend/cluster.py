"""Real server and worker processes on 127.0.0.1 for the network tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from animate4d.protocol.client import Client

SLOW_WORKER = Path(__file__).with_name("slow_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 20.0, every: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """One server and any number of workers, each its own process (so tests can kill -9)."""

    def __init__(self, store: Path, *, keys: Path | None = None, throttle: float = 0.0):
        self.store, self.keys, self.throttle = store, keys, throttle
        self.client_addr = f"tcp://127.0.0.1:{free_port()}"
        self.worker_addr = f"tcp://127.0.0.1:{free_port()}"
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs = store.parent / f"{store.name}-logs"
        self.logs.mkdir(exist_ok=True)

    def _spawn(self, name: str, args: list[str],
               command: tuple[str, ...] = ("-m", "animate4d.backend")) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen([sys.executable, *command, *args],
                                    stdout=log, stderr=subprocess.STDOUT)

    def start_server(self, *extra: str) -> subprocess.Popen:
        args = ["serve", "--bind", self.client_addr, "--workers-bind", self.worker_addr,
                "--store", str(self.store), *extra]
        if self.keys:
            args += ["--keys", str(self.keys)]
        self.server = self._spawn("server", args)
        return self.server

    def start_worker(self, *extra: str, throttle: float | None = None) -> subprocess.Popen:
        args = ["worker", "--server", self.worker_addr, "--name", f"w{len(self.workers)}",
                *extra]
        t = self.throttle if throttle is None else throttle
        if self.keys:
            args += ["--server-key", str(self.keys / "server.key"),
                     "--key", str(self.keys / "workers" / "w.key_secret")]
        command = (str(SLOW_WORKER), str(t)) if t else ("-m", "animate4d.backend")
        w = self._spawn(f"worker{len(self.workers)}", args, command)
        self.workers.append(w)
        return w

    def client(self, **kw) -> Client:
        c = Client(self.client_addr, **kw)
        wait_until(lambda: _try_connect(c), 20, 0.2, "the server to answer")
        return c

    def log(self, name: str) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for p in [*self.workers, self.server]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.server]:
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def _try_connect(c: Client) -> bool:
    from animate4d.protocol.client import ConnectionLost

    saved, c.timeout_s = c.timeout_s, 2.0
    try:
        c.connect()
        return True
    except ConnectionLost:
        return False
    finally:
        c.timeout_s = saved
