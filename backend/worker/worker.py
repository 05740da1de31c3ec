"""The worker: one job at a time, from any host.

The main thread owns the socket: it sends heartbeats, receives assignments and cancels, and
forwards what the job thread puts in the outbox (progress, checkpoints, the result, the end).
The job thread runs the pipeline; its progress callback raises CancelledError once a cancel
has arrived, which unwinds the pipeline at its next report. If the server goes silent the worker
drops its job (the server requeues it from its checkpoints) and reconnects with back-off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import queue
import socket as pysocket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import zmq

from animate4d.protocol import a4d, keys, limits, wire
from animate4d.protocol.errors import Animate4DError, CancelledError

from ..checkpoints import MemoryCheckpoints
from ..export.preview_media import preview_png
from ..pipelines import JobFn, MeshJobFn, offer, offer_mesh

PROGRESS_HZ = 10.0


def _try_send(sock: zmq.Socket, data: bytes) -> bool:
    """Send without blocking: a DEALER with no live connection would wait forever."""
    try:
        sock.send(data, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


@dataclass
class JobRun:
    job_id: str
    assign: wire.Assign
    cancel: threading.Event = field(default_factory=threading.Event)
    replies: dict[str, queue.Queue] = field(default_factory=dict)
    done: bool = False


class _ServerCheckpoints(MemoryCheckpoints):
    """Reads fetch from the server on first use; writes go to the server and stay here."""

    def __init__(self, worker: Worker, run: JobRun):
        super().__init__()
        self.worker, self.run = worker, run
        self.remote = set(run.assign.checkpoints)

    def get(self, key: str) -> bytes | None:
        if key in self:
            return self[key]
        if key not in self.remote:
            return None
        data = self.worker._fetch_checkpoint(self.run, key)
        if data is not None:
            self[key] = data
        return data

    def put(self, key: str, data: bytes) -> None:
        self[key] = data
        self.worker._upload(self.run, key, data)


class Worker:
    def __init__(
        self,
        server: str,
        *,
        name: str | None = None,
        server_key: bytes | None = None,
        keypair: tuple[bytes, bytes] | None = None,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 3.0,
        throttle_s: float = 0.0,
        pipelines: dict[str, JobFn] | None = None,
        missing: dict[str, list[str]] | None = None,
        mesh_pipelines: dict[str, MeshJobFn] | None = None,
        log=None,
    ):
        self.server = server
        self.name = name or f"{pysocket.gethostname()}:{os.getpid()}"
        self.server_key, self.keypair = server_key, keypair
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        self.throttle_s = throttle_s
        if pipelines is None:
            pipelines, missing = offer()
        self.pipelines = pipelines
        self.mesh_pipelines = offer_mesh() if mesh_pipelines is None else mesh_pipelines
        # Presets it cannot run for want of models -> the roles it lacks (said in the hello).
        self.missing = {p: list(r) for p, r in (missing or {}).items() if p not in pipelines}
        self.log = log or (lambda m: print(f"worker: {m}", file=sys.stderr, flush=True))
        self.outbox: queue.Queue = queue.Queue()
        self.job: JobRun | None = None
        self._pending = None  # an outbox item that could not be sent yet
        self._hello_at = 0.0

    # -- the network loop ---------------------------------------------------------------
    def _connect(self, ctx: zmq.Context) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_BYTES)
        if self.server_key is not None:
            keys.apply_client_curve(s, self.server_key, self.keypair)
        s.connect(self.server)
        self._hello(s)
        return s

    def _hello(self, sock) -> None:
        _try_send(sock, wire.encode(wire.WorkerHello(
            name=self.name, presets=sorted(self.pipelines), missing=self.missing,
            features=["mesh"] if self.mesh_pipelines else [],
            mesh_presets=sorted(self.mesh_pipelines))))
        self._hello_at = time.monotonic()

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        ctx = zmq.Context()
        sock = self._connect(ctx)
        self.log(f"{self.name} connected to {self.server} "
                 f"(presets: {', '.join(sorted(self.pipelines))}, {platform.python_version()})")
        last_seen = last_beat = time.monotonic()
        backoff = 0.5
        try:
            while not stop.is_set():
                if sock.poll(50):
                    while True:
                        try:
                            data = sock.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        last_seen = time.monotonic()
                        backoff = 0.5
                        self._on_message(sock, data)
                self._drain_outbox(sock)
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_s:
                    running = self.job.job_id if self.job else None
                    _try_send(sock, wire.encode(wire.Heartbeat(running=running)))
                    last_beat = now
                if now - last_seen > self.dead_after_s + backoff:
                    self.log(f"server silent for {now - last_seen:.1f} s: reconnecting")
                    self._abandon()
                    sock.close(0)
                    sock = self._connect(ctx)
                    last_seen = now
                    backoff = min(backoff * 2, 10.0)
        finally:
            self._abandon()
            sock.close(0)
            ctx.term()

    def _on_message(self, sock, data: bytes) -> None:
        try:
            env, body = wire.decode(data)
        except wire.WireError as e:
            self.log(f"ignoring a bad message from the server: {e}")
            return
        if isinstance(body, wire.Assign):
            if self.job is not None:  # the server thinks this worker idle: its view wins
                self.log(f"job {self.job.job_id[:8]}: dropped for a new assignment")
                self._abandon()
            self._start(env.job, body)
        elif isinstance(body, wire.Cancel):
            if self.job is not None and self.job.job_id == env.job:
                self.job.cancel.set()
        elif isinstance(body, wire.Chunk) and self.job is not None and env.re:
            waiting = self.job.replies.get(env.re)
            if waiting is not None:
                waiting.put(body)
        elif isinstance(body, wire.Error):
            if body.code == "unknown_worker":
                # A restarted server: it has requeued our job (and resumes it from its
                # checkpoints), so drop ours and introduce ourselves again.
                self._abandon()
                if time.monotonic() - self._hello_at > 1.0:
                    self._hello(sock)
            else:
                self.log(f"server says: {body.code}: {body.message}")

    def _drain_outbox(self, sock) -> None:
        while True:
            if self._pending is None:
                try:
                    self._pending = self.outbox.get_nowait()
                except queue.Empty:
                    return
            run, body, msg_id = self._pending
            if run is not self.job:
                self._pending = None  # from an abandoned job
                continue
            if body is None:  # the job thread has finished
                self.job, self._pending = None, None
                continue
            if not _try_send(sock, wire.encode(body, id=msg_id, job=run.job_id)):
                return  # no connection right now: keep it, in order, for the next turn
            self._pending = None

    def _abandon(self) -> None:
        self._pending = None
        if self.job is not None:
            self.job.cancel.set()
            for q in self.job.replies.values():
                q.put(None)
            self.job = None

    # -- the job thread -----------------------------------------------------------------
    def _start(self, job_id: str, assign: wire.Assign) -> None:
        fn = self.pipelines.get(assign.options.preset)
        if assign.mesh is not None:  # mesh mode: the same job thread, given the mesh
            mesh_fn = self.mesh_pipelines.get(assign.options.preset)
            fn = None if mesh_fn is None else (
                lambda image, options, progress, checkpoints: mesh_fn(
                    assign.mesh, options, progress, checkpoints))
        run = JobRun(job_id, assign)
        self.job = run
        if fn is None:
            mode = " in mesh mode" if assign.mesh is not None else ""
            self._send(run, wire.Failed(code="unsupported_preset", message=f"this worker "
                                        f"cannot run {assign.options.preset}{mode}"))
            self.outbox.put((run, None, None))
            return
        self.log(f"job {job_id[:8]}: attempt {assign.attempt}, {assign.options.preset}, "
                 f"{len(assign.checkpoints)} checkpoint(s) to resume from")
        threading.Thread(target=self._run_job, args=(run, fn), daemon=True,
                         name=f"job-{job_id[:8]}").start()

    def _send(self, run: JobRun, body: wire.Body, msg_id: str | None = None) -> None:
        self.outbox.put((run, body, msg_id))

    def _run_job(self, run: JobRun, fn: JobFn) -> None:
        last = {"stage": None, "at": 0.0}

        def progress(stage: str, step: int, total: int) -> None:
            if run.cancel.is_set():
                raise CancelledError("cancelled")
            # At most PROGRESS_HZ messages a second: a GPU stage reports thousands of steps.
            # A new stage and the last step of one always go out.
            now = time.monotonic()
            if stage != last["stage"] or step >= total or now - last["at"] >= 1 / PROGRESS_HZ:
                self._send(run, wire.Progress(stage=stage, step=step, total=total))
                last["stage"], last["at"] = stage, now
            if self.throttle_s and run.cancel.wait(self.throttle_s):
                raise CancelledError("cancelled")

        try:
            mesh = fn(run.assign.image, run.assign.options, progress,
                      _ServerCheckpoints(self, run))
            if run.cancel.is_set():
                raise CancelledError("cancelled")
            self._send(run, wire.Preview(png=preview_png(mesh)))
            self._upload(run, "", a4d.dumps(mesh))
            self.log(f"job {run.job_id[:8]}: done")
        except CancelledError:
            self._send(run, wire.Cancelled())
            self.log(f"job {run.job_id[:8]}: cancelled")
        except Animate4DError as e:
            self._send(run, wire.Failed(code=e.code, message=str(e)))
            self.log(f"job {run.job_id[:8]}: failed: {e}")
        except Exception as e:
            self.log(f"job {run.job_id[:8]}: internal error:\n{traceback.format_exc()}")
            self._send(run, wire.Failed(code="internal", message=f"{type(e).__name__}: {e}"))
        finally:
            self.outbox.put((run, None, None))

    def _upload(self, run: JobRun, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        step = limits.CHUNK_BYTES
        for offset in range(0, max(len(data), 1), step):
            self._send(run, wire.Chunk(offset=offset, total=len(data), key=key, sha256=digest,
                                       data=data[offset : offset + step]))

    def _fetch_checkpoint(self, run: JobRun, key: str) -> bytes | None:
        buf = bytearray()
        digest, total = "", None
        while total is None or len(buf) < total:
            msg_id = wire.new_id()
            reply: queue.Queue = queue.Queue()
            run.replies[msg_id] = reply
            self._send(run, wire.CheckpointGet(key=key, offset=len(buf)), msg_id)
            try:
                chunk = reply.get(timeout=30)
            except queue.Empty:
                chunk = None
            run.replies.pop(msg_id, None)
            if chunk is None or chunk.offset != len(buf) or chunk.total == 0:
                return None  # lost, or gone: recompute instead
            buf += chunk.data
            digest, total = chunk.sha256, chunk.total
            if not chunk.data:
                return None
        data = bytes(buf)
        return data if hashlib.sha256(data).hexdigest() == digest else None
