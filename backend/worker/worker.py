"""The worker: one job at a time, from any host.

The main thread owns the socket: it sends heartbeats, receives assignments and cancels, and
forwards what the job thread puts in the outbox (progress, checkpoints, the result, the end).
The job thread runs the pipeline; its progress callback raises CancelledError once a cancel
has arrived, which unwinds the pipeline at its next report. If the server goes silent the worker
drops its job (the server requeues it from its checkpoints) and reconnects with back-off.

Liveness does not depend on this loop getting the GIL: libzmq's ZMTP heartbeats keep the
connection alive while a job thread holds it (protocol/liveness.py).

Leaving (`leave`: SIGTERM from a scheduler, `max_jobs` reached, `exit_when_idle_s` passed): the
running job stops at its next step, where the pipeline checkpoints where it stands; once those
uploads are out, a `hand_back` tells the server to requeue the job at once and to assign this
worker nothing more; `run` returns when the server has answered (or after `stop_timeout_s` and
a few seconds more if it cannot).
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
from animate4d.protocol.errors import Animate4DError, CancelledError, PreemptedError
from animate4d.protocol.liveness import zmtp_heartbeats

from ..export.preview_media import preview_png
from ..jobs.checkpoints import MemoryCheckpoints
from ..jobs.presets import SPECS, JobFn, MeshJobFn, offer, offer_mesh, spec
from ..preprocess.image_io import ImageFile
from ..runtime import devices

PROGRESS_HZ = 10.0
HAND_BACK_ACK_S = 5.0  # how long a leaving worker waits for the server to take its job back


def curve_keys(server: str, server_key_path, key_path, insecure: bool = False):
    """(the server's public key, this worker's key pair) from their files, or (None, None)
    without them, which is refused for a server off this machine unless `insecure`."""
    server_key, keypair = keys.load_curve_files(server_key_path, key_path)
    if server_key is None and not keys.is_loopback(server) and not insecure:
        raise keys.KeyFileError(
            f"{server} is not on this machine, and no keys were given",
            hint="pass --server-key and --key (see `animate4d keys`), or --insecure")
    return server_key, keypair


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
    preempted: bool = False  # `cancel` was set because the worker is leaving
    handed_back: bool = False  # the pipeline stopped for that (not a final end)


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
        pipelines: dict[str, JobFn] | None = None,
        missing: dict[str, list[str]] | None = None,
        max_jobs: int | None = None,
        exit_when_idle_s: float | None = None,
        stop_timeout_s: float = 20.0,
        parent_pid: int | None = None,
        mesh_pipelines: dict[str, MeshJobFn] | None = None,
        gpu_memory: int | None = None,
        log=None,
    ):
        self.server = server
        self.name = name or f"{pysocket.gethostname()}:{os.getpid()}"
        self.server_key, self.keypair = server_key, keypair
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        if pipelines is None:
            pipelines, missing = offer()
        self.pipelines = pipelines
        self.mesh_pipelines = offer_mesh() if mesh_pipelines is None else mesh_pipelines
        # Presets it cannot run for want of models -> the roles it lacks (said in the hello).
        self.missing = {p: list(r) for p, r in (missing or {}).items() if p not in pipelines}
        # GPU memory its jobs may use (said in the hello): asked of torch only by a worker
        # that runs a GPU preset.
        if gpu_memory is None:
            gpu = any(spec(p).roles for p in [*pipelines, *self.mesh_pipelines] if p in SPECS)
            gpu_memory = devices.job_gpu_memory() if gpu else 0
        self.gpu_memory = gpu_memory
        self.log = log or (lambda m: print(f"worker: {m}", file=sys.stderr, flush=True))
        self.outbox: queue.Queue = queue.Queue()
        self.job: JobRun | None = None
        self._pending = None  # an outbox item that could not be sent yet
        self._hello_at = 0.0
        # Farm limits: leave after this many jobs ended here, or after this long without one.
        self.max_jobs, self.exit_when_idle_s = max_jobs, exit_when_idle_s
        self.stop_timeout_s = stop_timeout_s
        self.parent_pid = parent_pid  # stop when this process is no longer our parent
        self.jobs_ended = 0
        self._idle_since = time.monotonic()
        self._leave_reason: str | None = None
        self._leave_at: float | None = None
        self._handed: str | None = None  # the job whose pipeline stopped to be handed back
        self._bye: tuple[str, str | None] | None = None  # the hand_back's (id, job)
        self._bye_at = 0.0  # when the job was out of the way and the hand_back due
        self._bye_sent = False
        self._bye_acked = False

    # -- the network loop ---------------------------------------------------------------
    def _connect(self, ctx: zmq.Context) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_BYTES)
        zmtp_heartbeats(s, self.heartbeat_s, self.dead_after_s)
        if self.server_key is not None:
            keys.apply_client_curve(s, self.server_key, self.keypair)
        s.connect(self.server)
        self._hello(s)
        return s

    def _hello(self, sock) -> None:
        _try_send(sock, wire.encode(wire.WorkerHello(
            name=self.name, presets=sorted(self.pipelines), missing=self.missing,
            features=["mesh"] if self.mesh_pipelines else [],
            mesh_presets=sorted(self.mesh_pipelines), gpu_memory=self.gpu_memory)))
        self._hello_at = time.monotonic()

    @property
    def leaving(self) -> bool:
        return self._leave_reason is not None

    def leave(self, reason: str) -> None:
        """Hand the running job back at its next step and return from `run` (see the module
        docstring). Safe from any thread and from a signal handler."""
        if self._leave_reason is None:
            self._leave_reason = reason

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        ctx = zmq.Context()
        sock = self._connect(ctx)
        self.log(f"{self.name} connected to {self.server} "
                 f"(presets: {', '.join(sorted(self.pipelines))}, {platform.python_version()})")
        last_seen = last_beat = self._idle_since = time.monotonic()
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
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    self.log("the process that started this worker has exited: stopping")
                    break
                if self._leaving_step(sock, now):
                    break
                if self._bye is None and now - last_beat >= self.heartbeat_s:
                    running = self.job.job_id if self.job else None
                    _try_send(sock, wire.encode(wire.Heartbeat(running=running)))
                    last_beat = now
                # Messages waiting means this thread was starved (a job thread held the GIL),
                # not that the server went quiet.
                if (now - last_seen > self.dead_after_s + backoff and not self.leaving
                        and not sock.poll(0)):
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

    def _leaving_step(self, sock, now: float) -> bool:
        """Leave when asked or when a farm limit is reached; True once the job is handed back
        (or the server could not be told in time) and `run` should return."""
        if not self.leaving and self.job is None:
            if self.max_jobs is not None and self.jobs_ended >= self.max_jobs:
                self.leave(f"ran {self.jobs_ended} job(s), its --max-jobs")
            elif (self.exit_when_idle_s is not None
                  and now - self._idle_since >= self.exit_when_idle_s):
                self.leave(f"idle for {now - self._idle_since:.0f} s, its --exit-when-idle")
        if not self.leaving:
            return False
        if self._leave_at is None:
            self._leave_at = now
            self.log(f"leaving: {self._leave_reason}")
            if self.job is not None:
                self.job.preempted = True
                self.job.cancel.set()
        if self._bye is None:
            if self.job is not None and now - self._leave_at < self.stop_timeout_s:
                return False  # the job is on its way to its next step and checkpoint
            job = self._handed or (self.job.job_id if self.job is not None else None)
            if self.job is not None:
                self.log(f"job {self.job.job_id[:8]}: no step within {self.stop_timeout_s:g} s; "
                         "handing it back from its earlier checkpoints")
            self._abandon()
            self._bye, self._bye_at = (wire.new_id(), job), now
        if not self._bye_sent:
            msg_id, job = self._bye
            self._bye_sent = _try_send(sock, wire.encode(
                wire.HandBack(reason=self._leave_reason[:200]), id=msg_id, job=job))
        if self._bye_acked:
            job = self._bye[1]
            self.log(f"job {job[:8]}: handed back" if job else "left the server")
            return True
        if now - self._bye_at > HAND_BACK_ACK_S:
            self.log("the server did not answer the hand-back: leaving all the same (it "
                     "requeues the job when it notices this worker gone)")
            return True
        return False

    def _on_message(self, sock, data: bytes) -> None:
        try:
            env, body = wire.decode(data)
        except wire.WireError as e:
            self.log(f"ignoring a bad message from the server: {e}")
            return
        if self.leaving and isinstance(body, (wire.Assign, wire.Error)):
            # No new job, and no second hello: the hand-back gives the server back whatever
            # it has assigned to this worker meanwhile.
            return
        if isinstance(body, wire.Ok) and self._bye is not None and env.re == self._bye[0]:
            self._bye_acked = True
        elif isinstance(body, wire.Assign):
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
                self._idle_since = time.monotonic()
                if run.handed_back:
                    self._handed = run.job_id
                else:
                    self.jobs_ended += 1
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

        def stopped() -> CancelledError:
            return (PreemptedError("the worker is stopping") if run.preempted
                    else CancelledError("cancelled"))

        def progress(stage: str, step: int, total: int) -> None:
            if run.cancel.is_set():
                raise stopped()
            # At most PROGRESS_HZ messages a second: a GPU stage reports thousands of steps.
            # A new stage and the last step of one always go out.
            now = time.monotonic()
            if stage != last["stage"] or step >= total or now - last["at"] >= 1 / PROGRESS_HZ:
                self._send(run, wire.Progress(stage=stage, step=step, total=total))
                last["stage"], last["at"] = stage, now

        try:
            image = ImageFile(run.assign.image, run.assign.image_name or "the image")
            mesh = fn(image, run.assign.options, progress, _ServerCheckpoints(self, run))
            if run.cancel.is_set() and not run.preempted:  # a finished job is still delivered
                raise CancelledError("cancelled")
            self._send(run, wire.Preview(png=preview_png(mesh)))
            self._upload(run, "", a4d.dumps(mesh))
            self.log(f"job {run.job_id[:8]}: done")
        except PreemptedError:
            run.handed_back = True
            self.log(f"job {run.job_id[:8]}: stopped to be handed back")
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
