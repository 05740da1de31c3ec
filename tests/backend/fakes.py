"""A worker that speaks the protocol by hand, and a server in a thread of the test.

The fake worker does exactly what a test says (take a job and go silent, upload half a file,
send a chosen result); the in-thread server lets a test give it a store whose writes fail.
Both talk over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import zmq

from animate4d.backend.server.server import Server
from animate4d.protocol import a4d, limits, wire
from animate4d.protocol.mesh import AnimatedMesh
from tests.backend.cluster import free_port


def result_bytes(frames: int = 2, vertices: int = 4) -> bytes:
    """A valid .a4d of roughly frames * vertices * 12 bytes."""
    rng = np.random.default_rng(frames * 7 + vertices)
    v = rng.random((vertices, 3), dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    moved = v[None] + rng.random((frames, vertices, 3), dtype=np.float32) * 0.01
    return a4d.dumps(AnimatedMesh(vertices=v, faces=faces, frames=moved))


class FakeWorker:
    def __init__(self, address: str, name: str = "fake", hello: bool = True,
                 beat: bool = True, gpu_memory: int = 0):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.running: str | None = None  # what its heartbeats say it runs
        self.beat = beat  # False: a worker that died after its hello
        self._beat = 0.0
        if hello:
            self.send(wire.WorkerHello(name=name, presets=["preview"], gpu_memory=gpu_memory))

    def send(self, body: wire.Body, job: str | None = None, id: str | None = None) -> None:
        self.sock.send(wire.encode(body, job=job, id=id))
        if isinstance(body, (wire.Failed, wire.Cancelled)):
            self.running = None

    def recv(self, timeout: float = 20.0, skip=(wire.Heartbeat, wire.Ok)):
        """The next message not in `skip`; heartbeats go out meanwhile, as a worker's do."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.beat and time.monotonic() - self._beat > 0.3:
                self.send(wire.Heartbeat(running=self.running))
                self._beat = time.monotonic()
            if self.sock.poll(100):
                env, body = wire.decode(self.sock.recv())
                if not isinstance(body, skip):
                    return env, body
        raise AssertionError("the server sent nothing")

    def take(self, timeout: float = 20.0) -> tuple[str, wire.Assign]:
        env, body = self.recv(timeout)
        assert isinstance(body, wire.Assign), body
        self.running = env.job
        self.send(wire.Heartbeat(running=env.job))
        return env.job, body

    def upload(self, job: str, data: bytes, key: str = "", upto: int | None = None) -> None:
        digest = hashlib.sha256(data).hexdigest()
        step = limits.CHUNK_BYTES
        for offset in range(0, max(len(data), 1), step):
            if upto is not None and offset >= upto:
                return
            self.send(wire.Chunk(offset=offset, total=len(data), key=key, sha256=digest,
                                 data=data[offset : offset + step]), job=job)
        if key == "":
            self.running = None

    def close(self) -> None:
        self.sock.close(0)


class ThreadServer:
    """`Server` in a thread of the test; `restart()` is a new Server on the same store."""

    def __init__(self, store, **kw):
        self.store_arg, self.kw = store, kw
        self.client_addr = f"tcp://127.0.0.1:{free_port()}"
        self.worker_addr = f"tcp://127.0.0.1:{free_port()}"
        self.lines: list[str] = []
        self.server: Server | None = None
        self.start()

    def start(self) -> None:
        # Fake workers beat only while a test waits on them: slow to declare them dead.
        kw = {"heartbeat_s": 0.2, "dead_after_s": 30.0, **self.kw}
        self.server = Server(self.store_arg, self.client_addr, self.worker_addr,
                             log=self.lines.append, **kw)
        self.stop_event, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.server.run, args=(self.stop_event, ready),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()
