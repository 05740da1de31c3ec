"""The server loop: one thread, one poller, two ROUTER sockets (clients, workers).

It owns the job store and the queue and never runs a job. Every message is decoded and checked
before anything happens; a bad one gets an `error` reply (or is dropped if it cannot even be
answered), and a handler's unexpected exception is logged and answered as `internal` — the loop
itself never stops for a message.

The store may fail under it (disk full, folder removed): every write goes through `_save` or is
caught where it happens; the state in memory stays the truth and is written again once the store
takes writes. Meanwhile new submits are refused (`storage_full`) and no job is dispatched, since
its result could not be kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq
from zmq.auth.thread import ThreadAuthenticator

from animate4d.protocol import a4d, keys, limits, wire
from animate4d.protocol.errors import (
    AddressError,
    Animate4DError,
    NotAllowedError,
    OutOfGpuMemoryError,
    ResultDamagedError,
    StorageError,
    StorageFullError,
    StoreDamagedError,
)
from animate4d.protocol.liveness import zmtp_heartbeats
from animate4d.protocol.wire import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    JobInfo,
    WireError,
)

from ..preprocess.image_io import probe_image
from ..version import package_version
from .scheduler import FairQueue
from .store import JobRecord, JobStore, file_sha256

LOCAL_OWNER = "local"
CLIENT_QUEUE_MESSAGES = 8


@dataclass
class CurveConfig:
    """Server side of CURVE: its key pair and the folders of allowed public keys."""

    keys_dir: Path

    @property
    def server_keypair(self) -> tuple[bytes, bytes]:
        return keys.load_keypair(self.keys_dir / "server.key_secret")

    def allowed(self, kind: str) -> set[bytes]:
        return keys.public_keys_in(self.keys_dir / kind)


class _KeyFolders:
    """ZAP credentials provider: a key is allowed when its file is in the folder (re-read
    when the folder changes, so adding a client needs no restart)."""

    def __init__(self, curve: CurveConfig):
        self.curve = curve
        self._cache: dict[str, tuple[float, set[bytes]]] = {}

    def keys(self, kind: str) -> set[bytes]:
        d = self.curve.keys_dir / kind
        stamp = d.stat().st_mtime if d.exists() else 0.0
        cached = self._cache.get(kind)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self.curve.allowed(kind))
            self._cache[kind] = cached
        return cached[1]

    def member(self, kind: str, owner: str) -> bool:
        """Whether the key (its z85 text, as ZAP's User-Id gives it) is in the folder now."""
        return owner.encode() in self.keys(kind)

    def callback(self, domain: str, key: bytes) -> bool:
        if domain == "clients":
            return key in self.keys("clients") or key in self.keys("admins")
        if domain == "workers":
            return key in self.keys("workers")
        return False


@dataclass
class WorkerConn:
    ident: bytes
    name: str
    presets: list[str]
    last_seen: float
    features: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)  # preset -> roles it lacks
    mesh_presets: list[str] = field(default_factory=list)  # presets it runs in mesh mode
    job: str | None = None
    assigned_at: float = 0.0
    gpu_memory: int = 0  # bytes its jobs may use (0: no GPU, or not said)


# A job that ran out of GPU memory goes only to a worker with at least this much more than
# the one it ran out on: a few hundred MB more would run out the same way.
GPU_MEMORY_MARGIN = 2 * 2**30


def _mesh_presets(hello: wire.WorkerHello) -> list[str]:
    """The presets a worker runs in mesh mode; the bare feature "mesh" means all it offers."""
    listed = hello.mesh_presets or (hello.presets if "mesh" in hello.features else [])
    return [p[:32] for p in listed[:16]]


@dataclass
class Upload:
    total: int
    data: bytearray = field(default_factory=bytearray)


class Server:
    def __init__(
        self,
        store: str | os.PathLike | JobStore,
        client_bind: str,
        worker_bind: str,
        *,
        curve: CurveConfig | None = None,
        insecure: bool = False,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 3.0,
        max_attempts: int = 3,
        worker_stall_s: float = 600.0,
        retention_s: float = 7 * 24 * 3600,
        stranded_s: float = 60.0,
        log=None,
    ):
        for address in (client_bind, worker_bind):
            if curve is None and not insecure and not keys.is_loopback(address):
                raise Animate4DError(
                    f"refusing to listen on {address} without encryption",
                    hint="give --keys DIR (made with `animate4d keys server DIR`), or "
                         "--insecure if this network is trusted",
                )
        self.store = store if isinstance(store, JobStore) else JobStore(store)
        self.client_bind, self.worker_bind = client_bind, worker_bind
        self.curve = curve
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        # A worker is lost when its connection closes (ZMTP heartbeats, protocol/liveness.py);
        # its own heartbeats only stopping means a job thread holds the GIL, so that alone
        # counts as a hang only after this long.
        self.worker_stall_s = worker_stall_s
        self.max_attempts, self.retention_s = max_attempts, retention_s
        # A job waiting for a worker with more GPU memory than any connected one fails after
        # this long (a bigger worker that restarts is back well within it).
        self.stranded_s = stranded_s
        self._stranded: dict[str, float] = {}  # job -> since when no worker can take it
        self.log = log or (lambda msg: print(f"serve: {msg}", file=sys.stderr, flush=True))

        self.jobs: dict[str, JobRecord] = {}
        self.queue = FairQueue()
        self.workers: dict[bytes, WorkerConn] = {}
        self.offered: set[str] = set()  # presets any worker has offered since the start
        self.subscribers: dict[str, set[bytes]] = {}
        self.client_seen: dict[bytes, float] = {}
        self.uploads: dict[tuple[str, str], Upload] = {}
        self.submits: dict[tuple[str, str], str] = {}
        self._dirty: set[str] = set()
        self._cancelling: set[str] = set()
        self._sha: dict[str, tuple[tuple, str]] = {}  # result checked: (size, mtime, inode)
        self._members: _KeyFolders | None = _KeyFolders(curve) if curve is not None else None
        self.greeted: set[bytes] = set()  # client connections that said hello
        self.storage_error: str | None = None  # why the store refuses writes, while it does
        self._dispatch_after_reply = False
        self.messages_handled = 0
        self.busy_s = 0.0  # time spent handling messages (the server's overhead)
        self._next_sweep = 0.0
        self._load()

    # -- start-up ---------------------------------------------------------------------
    def _load(self) -> None:
        records, problems = self.store.load_all()
        for line in problems:
            self.log(f"store: {line}")
        for rec in sorted(records, key=lambda r: r.info.created):
            self.jobs[rec.info.id] = rec
            if rec.submit_id:
                self.submits[(rec.owner, rec.submit_id)] = rec.info.id
            if rec.info.state in (QUEUED, RUNNING):
                if rec.info.state == RUNNING:
                    # Not the job's fault, nor a worker's: not counted against its attempts.
                    rec.info.state = QUEUED
                    rec.info.attempts = max(0, rec.info.attempts - 1)
                    self.store.log(rec.info.id, "server restarted: requeued")
                    self._save(rec)
                self.queue.push(rec.owner, rec.info.id, front=True)
        if self.jobs:
            self.log(f"{len(self.jobs)} job(s) in the store, {len(self.queue)} queued")

    def _sockets(self, ctx: zmq.Context):
        self.auth = None
        clients, workers = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
        for s in (clients, workers):
            s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_BYTES)
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 1000)
        # A client that sends requests without reading the replies (say, a hundred fetches
        # of 4 MiB) fills its own queue, not the server's memory: past this many messages
        # waiting for it, its replies and events are dropped (it asks again; `wait` polls).
        clients.setsockopt(zmq.SNDHWM, CLIENT_QUEUE_MESSAGES)
        if self.curve is not None:
            self.auth = ThreadAuthenticator(ctx)
            self.auth.start()
            self.auth.configure_curve_callback("clients", _KeyFolders(self.curve))
            self.auth.configure_curve_callback("workers", _KeyFolders(self.curve))
            public, secret = self.curve.server_keypair
            for s, domain in ((clients, b"clients"), (workers, b"workers")):
                s.curve_server = True
                s.curve_publickey, s.curve_secretkey = public, secret
                s.zap_domain = domain
        zmtp_heartbeats(workers, self.heartbeat_s, self.dead_after_s)
        for sock, address, flag in ((clients, self.client_bind, "--bind"),
                                    (workers, self.worker_bind, "--workers-bind")):
            try:
                sock.bind(address)
            except zmq.ZMQError as e:
                clients.close(0)
                workers.close(0)
                if self.auth is not None:
                    self.auth.stop()
                in_use = e.errno == zmq.EADDRINUSE
                raise AddressError(
                    f"cannot listen on {address}: {e.strerror}",
                    hint=("another server (the Blender add-on's local one?) is using it: stop "
                          f"it, or give another port with {flag}") if in_use else
                         f"give an address of this machine with {flag}") from None
        return clients, workers

    # -- the loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, ready: threading.Event | None = None):
        stop = stop or threading.Event()
        ctx = zmq.Context()
        self.clients, self.workers_sock = self._sockets(ctx)
        self.log(f"clients on {self.client_bind}, workers on {self.worker_bind}"
                 + (" (CURVE)" if self.curve else ""))
        if ready is not None:
            ready.set()
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        next_tick = 0.0
        try:
            while not stop.is_set():
                events = dict(poller.poll(100))
                if self.clients in events:
                    self._drain(self.clients, self._on_client)
                if self.workers_sock in events:
                    self._drain(self.workers_sock, self._on_worker)
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + self.heartbeat_s
        finally:
            self._flush()
            per = self.busy_s / max(1, self.messages_handled) * 1e6
            self.log(f"stopping: handled {self.messages_handled} messages in {self.busy_s:.3f} s "
                     f"({per:.1f} us per message)")
            self.clients.close(0)
            self.workers_sock.close(0)
            if self.auth is not None:
                self.auth.stop()
            ctx.term()

    def _drain(self, sock, handler, budget: int = 200) -> None:
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.messages_handled += 1
            if len(frames) != 2:
                continue  # not a DEALER speaking our protocol: nothing to answer
            t0 = time.perf_counter()
            ident, payload = frames[0].bytes, frames[1]
            owner = LOCAL_OWNER
            if self.curve is not None:
                owner = payload.get("User-Id") or ""
                if not owner:
                    continue
            try:
                if not self._still_allowed(sock, ident, owner):
                    continue
                handler(ident, owner, payload.bytes)
            except Exception:
                self.log("internal error while handling a message:\n" + traceback.format_exc())
            self.busy_s += time.perf_counter() - t0

    def _still_allowed(self, sock, ident: bytes, owner: str) -> bool:
        """CURVE checks a key once, at the handshake: a key removed from its folder since then
        loses its access at its next message, not when it reconnects."""
        if self._members is None:
            return True
        if sock is self.workers_sock:
            if self._members.member("workers", owner):
                return True
            w = self.workers.get(ident)
            if w is not None:  # not the job's fault: not counted against its attempts
                self._worker_lost(w, "its key is no longer allowed", counted=False)
        elif self._members.member("clients", owner) or self._members.member("admins", owner):
            return True
        else:
            self._unsubscribe_all(ident)
        self._send(sock, ident, wire.Error(code=NotAllowedError.code, message=(
            "this key is no longer allowed on this server; ask its administrator")))
        return False

    def _send(self, sock, ident: bytes, body: wire.Body, **env) -> bool:
        try:
            sock.send_multipart([ident, wire.encode(body, **env)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # peer gone (ROUTER_MANDATORY) or its queue is full
            return False

    def _tick(self, now: float) -> None:
        for w in list(self.workers.values()):
            if now - w.last_seen > self.worker_stall_s:
                self._worker_lost(w, f"connected but silent for {now - w.last_seen:.0f} s")
            elif not self._beat(w):
                self._worker_lost(w, "its connection closed")
        for ident, seen in list(self.client_seen.items()):
            if now - seen > 10 * self.heartbeat_s:
                self._unsubscribe_all(ident)
        self._fail_stranded(now)
        self._check_store()
        self._flush()
        if now >= self._next_sweep:
            self._sweep()
            self._next_sweep = now + 60.0
        self._dispatch()

    def _beat(self, w: WorkerConn) -> bool:
        """Heartbeat a worker; False once its connection is gone (a full queue is not)."""
        try:
            self.workers_sock.send_multipart([w.ident, wire.encode(wire.Heartbeat(running=w.job))],
                                             zmq.NOBLOCK)
        except zmq.ZMQError as e:
            return e.errno != zmq.EHOSTUNREACH
        return True

    def _flush(self) -> None:
        for job_id in list(self._dirty):
            rec = self.jobs.get(job_id)
            if rec is None or self._save(rec, durable=False):
                self._dirty.discard(job_id)

    # -- the store under faults ---------------------------------------------------------
    def _save(self, rec: JobRecord, *, durable: bool = True) -> bool:
        """Write the record; if the store refuses, keep it dirty to write again later."""
        try:
            self.store.save(rec, durable=durable)
            return True
        except OSError as e:
            self._storage_failed(e)
            self._dirty.add(rec.info.id)
            return False

    def _storage_failed(self, e: OSError) -> None:
        if self.storage_error is None:
            self.log(f"store: a write failed ({e.strerror or e}): new jobs are refused and none "
                     f"is started until the store takes writes again")
        self.storage_error = (
            "the server's disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
            else f"the server cannot write its job store ({e.strerror or e})")

    def _check_store(self) -> None:
        """The store folder removed under the server: make it again and write back every job
        it knows (a job whose input went with it fails `store_damaged` when it would run)."""
        if not self.store.jobs_dir.is_dir():
            self.log(f"store: {self.store.jobs_dir} has disappeared: making it again and "
                     f"writing back {len(self.jobs)} job record(s)")
            try:
                self.store.jobs_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                self._storage_failed(e)
                return
            for job_id in self.jobs:
                try:
                    self.store.restore_dirs(job_id)
                except OSError as e:
                    self._storage_failed(e)
                self._dirty.add(job_id)
            self._sha.clear()
        if self.storage_error is not None:
            try:
                self.store.probe()
            except OSError as e:
                self._storage_failed(e)
                return
            self.storage_error = None
            self.log("store: writes succeed again: accepting and starting jobs")

    def _sweep(self) -> None:
        for job_id in self.store.expired(list(self.jobs.values()), self.retention_s, time.time()):
            self._forget(job_id)
            self.log(f"job {job_id} expired after the retention time")

    # -- clients ------------------------------------------------------------------------
    def _on_client(self, ident: bytes, owner: str, payload: bytes) -> None:
        self.client_seen[ident] = time.monotonic()
        try:
            env, body = wire.decode(payload)
        except WireError as e:
            self._send(self.clients, ident, wire.Error(code=e.code, message=e.message))
            return
        handler = self._client_handlers.get(type(body))
        try:
            if handler is None:
                raise WireError("unexpected_type", f"'{env.type}' is not a client request")
            reply = handler(self, ident, owner, env, body)
        except WireError as e:
            reply = wire.Error(code=e.code, message=e.message)
        except Animate4DError as e:
            reply = wire.Error(code=e.code, message=str(e))
        except Exception:
            self.log("internal error:\n" + traceback.format_exc())
            reply = wire.Error(code="internal", message="internal server error (logged)")
        if reply is not None:
            self._send(self.clients, ident, reply, re=env.id, job=env.job)
        if self._dispatch_after_reply:  # the `accepted` reply goes before the job's events
            self._dispatch_after_reply = False
            self._dispatch()

    def _is_admin(self, owner: str) -> bool:
        if self._members is None:
            return owner == LOCAL_OWNER  # no keys: every local client is one owner (README)
        return self._members.member("admins", owner)

    def _visible(self, owner: str, job_id: str | None) -> JobRecord:
        rec = self.jobs.get(job_id) if job_id else None
        if rec is None or not (rec.owner == owner or self._is_admin(owner)):
            # Another client's job looks exactly like a job that does not exist.
            raise WireError("not_found", f"no job {str(job_id)[:64]!r}")
        return rec

    def _info(self, rec: JobRecord, positions: dict[str, int] | None = None) -> JobInfo:
        """The job's info with its current queue position (`positions` once per reply)."""
        if rec.info.state == QUEUED:
            positions = self.queue.positions() if positions is None else positions
            rec.info.queue_position = positions.get(rec.info.id)
        else:
            rec.info.queue_position = None
        return rec.info

    def _hello(self, ident, owner, env, body: wire.Hello):
        self.greeted.add(ident)
        presets = sorted({p for w in self.workers.values() for p in w.presets})
        return wire.Welcome(
            server=f"animate4d {package_version()}", protocol=wire.PROTOCOL_VERSION,
            presets=presets, owner=owner[:12], admin=self._is_admin(owner),
            heartbeat_s=self.heartbeat_s,
            limits={"message_bytes": limits.MAX_MESSAGE_BYTES,
                    "image_pixels": limits.MAX_IMAGE_PIXELS,
                    "image_bytes": limits.MAX_IMAGE_FILE_BYTES,
                    "frames": limits.MAX_FRAMES, "prompt_chars": limits.MAX_PROMPT_CHARS,
                    "active_jobs": limits.MAX_ACTIVE_JOBS_PER_CLIENT,
                    "chunk_bytes": limits.CHUNK_BYTES},
        )

    def _submit(self, ident, owner, env, body: wire.Submit):
        known = self.submits.get((owner, env.id))
        if known is not None and known in self.jobs:  # a retried submit: same job, not a new one
            return wire.Accepted(job=self._info(self.jobs[known]))
        active = sum(1 for r in self.jobs.values()
                     if r.owner == owner and r.info.state in (QUEUED, RUNNING))
        if active >= limits.MAX_ACTIVE_JOBS_PER_CLIENT:
            raise WireError("limit_exceeded", f"you have {active} jobs queued or running; the "
                                              f"limit is {limits.MAX_ACTIVE_JOBS_PER_CLIENT}")
        body.options.validate()
        if body.mesh is not None:
            self._check_mesh(body.mesh, body.options.preset)
        self._check_preset(body.options.preset)
        probe_image(body.image)  # header only: size, format, pixel limits
        self._check_room(len(body.image))
        name = os.path.basename(body.image_name)[: limits.MAX_NAME_CHARS] or "image"
        job_id = secrets.token_hex(16)  # 128 bits; hex never starts with "-" (argv-safe)
        rec = JobRecord(
            info=JobInfo(id=job_id, state=QUEUED, preset=body.options.preset,
                         prompt=body.options.prompt, created=time.time()),
            owner=owner, options=body.options, image_name=name, submit_id=env.id,
            mesh=body.mesh is not None,
        )
        try:
            self.store.create(rec, body.image,
                              None if body.mesh is None else msgspec.msgpack.encode(body.mesh))
        except OSError as e:
            self._storage_failed(e)
            self._check_room(0)
        self.jobs[job_id] = rec
        self.submits[(owner, env.id)] = job_id
        self.queue.push(owner, job_id)
        self.subscribers.setdefault(job_id, set()).add(ident)  # the submitter hears progress
        self._dispatch_after_reply = True
        return wire.Accepted(job=self._info(rec))

    def _check_room(self, nbytes: int) -> None:
        """Refuse a job the store cannot keep (nothing is accepted that could be lost)."""
        if self.storage_error is None:
            try:
                if shutil.disk_usage(self.store.root).free < nbytes + (1 << 20):
                    self.storage_error = "the server's disk is full"
            except OSError as e:
                self._storage_failed(e)
        if self.storage_error is not None:
            error = StorageFullError if "disk is full" in self.storage_error else StorageError
            raise error(f"{self.storage_error}: no new jobs for now; jobs already accepted are "
                        f"kept. Try again later, or tell its admin")

    def _check_preset(self, preset: str) -> None:
        """Refuse a preset that no worker has offered since the server started when connected
        workers have said which models they lack for it: the artist hears what is missing
        instead of waiting on a job nobody can take. Otherwise the job waits in the queue
        (no worker yet, or one that offered it may come back)."""
        if preset in self.offered:
            return
        lacking = [(w.name, w.missing[preset]) for w in self.workers.values()
                   if preset in w.missing]
        if not lacking:
            return
        roles = sorted({r for _, rs in lacking for r in rs})
        who = "; ".join(f"{name} lacks {', '.join(rs)}" for name, rs in lacking[:4])
        raise WireError(
            "missing_model",
            f"no worker of this server can run the {preset} preset yet ({who}). On a worker's "
            f"host: animate4d models fetch {' '.join(roles)} --models DIR, then start "
            f"`animate4d worker --models DIR`; or ask for the preview preset")

    def _check_mesh(self, mesh: wire.MeshInput, preset: str) -> None:
        """Refuse mesh mode for a preset that no connected worker runs in mesh mode (while
        no worker is connected, the job waits like any other)."""
        able = {p for w in self.workers.values() for p in w.mesh_presets}
        if self.workers and preset not in able:
            if able:
                raise WireError("unsupported", f"mesh mode is not supported with the {preset} "
                                               f"preset on this server (its workers run mesh "
                                               f"mode with: {', '.join(sorted(able))})")
            raise WireError("unsupported", "this server cannot animate a mesh (mesh mode is "
                                           "not supported by its workers): send an image")
        n = mesh.vertices.shape[0] if mesh.vertices.shape else 0
        if n > limits.MAX_VERTICES or len(mesh.views) > limits.MAX_MESH_VIEWS:
            raise WireError("limit_exceeded", f"mesh mode takes at most {limits.MAX_VERTICES} "
                                              f"vertices and {limits.MAX_MESH_VIEWS} views")
        from ..meshmode.load import from_wire

        from_wire(mesh)  # a mesh that cannot be animated is refused now, saying why

    def _stored_mesh(self, job_id: str) -> wire.MeshInput | None:
        data = self.store.mesh(job_id)
        return None if data is None else msgspec.msgpack.decode(data, type=wire.MeshInput)

    def _status(self, ident, owner, env, body):
        return wire.JobState(job=self._info(self._visible(owner, env.job)))

    def _list(self, ident, owner, env, body):
        recs = [r for r in self.jobs.values() if r.owner == owner or self._is_admin(owner)]
        recs.sort(key=lambda r: r.info.created, reverse=True)
        positions = self.queue.positions()
        return wire.Jobs(jobs=[self._info(r, positions) for r in recs[: limits.MAX_JOBS_LISTED]])

    def _attach(self, ident, owner, env, body):
        rec = self._visible(owner, env.job)
        self.subscribers.setdefault(rec.info.id, set()).add(ident)
        return wire.JobState(job=self._info(rec))

    def _detach(self, ident, owner, env, body):
        rec = self._visible(owner, env.job)
        self.subscribers.get(rec.info.id, set()).discard(ident)
        return wire.Ok()

    def _cancel(self, ident, owner, env, body):
        rec = self._visible(owner, env.job)
        job_id = rec.info.id
        if rec.info.state == QUEUED:
            self.queue.remove(job_id)
            self._finish(rec, CANCELLED, None, None)
        elif rec.info.state == RUNNING:
            worker = self._worker_of(job_id)
            if worker is None:
                self._finish(rec, CANCELLED, None, None)
            else:
                self._cancelling.add(job_id)
                self._send(self.workers_sock, worker.ident, wire.Cancel(), job=job_id)
                self.store.log(job_id, "cancel requested")
        return wire.JobState(job=self._info(rec))

    def _delete(self, ident, owner, env, body):
        rec = self._visible(owner, env.job)
        if rec.info.state == RUNNING:
            raise WireError("busy", "the job is running: cancel it first")
        self.queue.remove(rec.info.id)
        self._forget(rec.info.id)
        return wire.Ok()

    def _fetch(self, ident, owner, env, body: wire.Fetch):
        rec = self._visible(owner, env.job)
        if rec.info.state != DONE:
            raise WireError("not_ready", f"the job is {rec.info.state}; results exist once done")
        path = self.store.result_path(rec.info.id)
        try:
            size = self._checked_result(rec, path)
            if not (0 <= body.offset <= size) or not (0 < body.length <= limits.CHUNK_BYTES):
                raise WireError("bad_request", f"offset must be in 0..{size} and length in "
                                               f"1..{limits.CHUNK_BYTES}")
            with open(path, "rb") as fh:
                fh.seek(body.offset)
                data = fh.read(body.length)
        except OSError as e:
            self._result_damaged(rec, f"its result file cannot be read ({e.strerror or e})")
        return wire.Chunk(offset=body.offset, total=size, data=data, sha256=rec.result_sha256)

    def _checked_result(self, rec: JobRecord, path: Path) -> int:
        """The result's size once its bytes match the checksum recorded at upload (checked again
        whenever the file changes on disk); a result that does not is never served."""
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._sha.get(rec.info.id)
        if cached is not None and cached[0] == stamp:
            return st.st_size
        digest = file_sha256(path)
        if not rec.result_sha256:  # a record from before checksums were kept
            rec.result_sha256 = digest
            self._dirty.add(rec.info.id)
        if digest != rec.result_sha256:
            self._result_damaged(rec, "its result file on disk does not match the checksum "
                                      "recorded when it was stored")
        self._sha[rec.info.id] = (stamp, digest)
        return st.st_size

    def _result_damaged(self, rec: JobRecord, why: str):
        """Never serve it: run the job again when its input is still there, else fail it."""
        job_id = rec.info.id
        self._sha.pop(job_id, None)
        self.log(f"job {job_id}: {why}")
        with contextlib.suppress(OSError):
            self.store.drop_result(job_id)
        if self.store.has_input(job_id):
            rec.info.state, rec.info.result_bytes, rec.result_sha256 = QUEUED, None, ""
            rec.info.finished = None
            self.store.log(job_id, f"{why}: queued to compute it again")
            self.queue.push(rec.owner, job_id, front=True)
            self._dirty.add(job_id)
            self._publish(job_id, wire.JobState(job=self._info(rec)))
            self._dispatch_after_reply = True
            raise ResultDamagedError(f"{why}; the job is being computed again: wait for it "
                                     f"(attach) and fetch again")
        self._finish(rec, FAILED, StoreDamagedError.code, f"{why}, and its input is gone too")
        raise ResultDamagedError(f"{why}, and its input is gone: submit it again")

    def _ping(self, ident, owner, env, body):
        # A client this server has no hello from (it restarted, or forgot an idle client) has
        # lost its attachments: it says hello and attaches again.
        return wire.Pong(known=ident in self.greeted)

    _client_handlers = {
        wire.Hello: _hello, wire.Submit: _submit, wire.Status: _status, wire.List: _list,
        wire.Attach: _attach, wire.Detach: _detach, wire.Cancel: _cancel,
        wire.Delete: _delete, wire.Fetch: _fetch, wire.Ping: _ping,
    }

    def _publish(self, job_id: str, body: wire.Body) -> None:
        subs = self.subscribers.get(job_id)
        if not subs:
            return
        data = wire.encode(body, job=job_id)
        for ident in list(subs):
            try:
                self.clients.send_multipart([ident, data], zmq.NOBLOCK)
            except zmq.Again:
                pass  # a slow reader misses this event, not the next ones
            except zmq.ZMQError:
                subs.discard(ident)

    def _unsubscribe_all(self, ident: bytes) -> None:
        for subs in self.subscribers.values():
            subs.discard(ident)
        self.client_seen.pop(ident, None)
        self.greeted.discard(ident)

    # -- workers ------------------------------------------------------------------------
    def _on_worker(self, ident: bytes, owner: str, payload: bytes) -> None:
        try:
            env, body = wire.decode(payload)
        except WireError as e:
            self._send(self.workers_sock, ident, wire.Error(code=e.code, message=e.message))
            return
        w = self.workers.get(ident)
        if isinstance(body, wire.WorkerHello):
            # A hello again on the same connection changes nothing (a restarted worker
            # process comes on a new connection; its old one times out and is requeued).
            if w is None:
                missing = {p[:32]: [r[:32] for r in roles[:16]]
                           for p, roles in list(body.missing.items())[:16]}
                self.workers[ident] = WorkerConn(ident, body.name[:64],
                                                 list(body.presets)[:16], time.monotonic(),
                                                 features=list(body.features)[:16],
                                                 missing=missing,
                                                 mesh_presets=_mesh_presets(body),
                                                 gpu_memory=max(0, body.gpu_memory))
                self.offered.update(body.presets[:16])
                self.log(f"worker {body.name[:64]} joined ({', '.join(body.presets)})")
            self._send(self.workers_sock, ident, wire.Ok(), re=env.id)
            self._dispatch()
            return
        if w is None and isinstance(body, wire.HandBack):
            # Nothing of it here: after a restart this server requeued its job already.
            self._send(self.workers_sock, ident, wire.Ok(), re=env.id)
            return
        if w is None:
            self._send(self.workers_sock, ident,
                       wire.Error(code="unknown_worker", message="say worker_hello first"))
            return
        w.last_seen = time.monotonic()
        if isinstance(body, wire.HandBack):
            self._w_hand_back(w, env, body)
            return
        handler = self._worker_handlers.get(type(body))
        if handler is None:
            return
        if isinstance(body, wire.Heartbeat):
            handler(self, w, env, body)
            return
        if env.job is None or env.job != w.job:
            # A late message about a job this worker no longer holds: tell it to stop.
            if env.job:
                self._send(self.workers_sock, ident, wire.Cancel(), job=env.job)
            return
        handler(self, w, env, body)

    def _worker_of(self, job_id: str) -> WorkerConn | None:
        return next((w for w in self.workers.values() if w.job == job_id), None)

    def _w_heartbeat(self, w: WorkerConn, env, body: wire.Heartbeat):
        if body.running == w.job:
            return
        if body.running is not None:  # a job it should not be running: stop it
            self._send(self.workers_sock, w.ident, wire.Cancel(), job=body.running)
        # Idle although it holds a job, and the assignment is not just in flight: it lost it.
        if w.job is not None and time.monotonic() - w.assigned_at > 2 * self.heartbeat_s:
            job_id, w.job = w.job, None
            self._requeue(job_id, "the worker lost the job")
            self._dispatch()

    def _w_progress(self, w, env, body: wire.Progress):
        rec = self.jobs[env.job]
        rec.info.stage, rec.info.step, rec.info.total = body.stage[:64], body.step, body.total
        self._dirty.add(rec.info.id)
        self._publish(rec.info.id, body)

    def _w_preview(self, w, env, body: wire.Preview):
        if len(body.png) <= limits.MAX_PREVIEW_BYTES:
            self._publish(env.job, body)

    def _w_chunk(self, w, env, body: wire.Chunk):
        job_id = env.job
        key = body.key
        cap = limits.MAX_A4D_BYTES if key == "" else limits.MAX_CHECKPOINT_BYTES
        up = self.uploads.get((job_id, key))
        if body.offset == 0:
            self._drop_uploads(job_id)  # a worker uploads one file at a time
            up = self.uploads[(job_id, key)] = Upload(total=body.total)
        if up is None or body.offset != len(up.data) or body.total != up.total or \
                body.total > cap or len(up.data) + len(body.data) > body.total:
            self.uploads.pop((job_id, key), None)
            self._send(self.workers_sock, w.ident,
                       wire.Error(code="bad_upload", message=f"chunk out of order for {key!r}"),
                       job=job_id)
            return
        up.data += body.data
        if len(up.data) < up.total:
            return
        del self.uploads[(job_id, key)]
        data = bytes(up.data)
        if hashlib.sha256(data).hexdigest() != body.sha256:
            self._send(self.workers_sock, w.ident,
                       wire.Error(code="bad_upload", message="sha256 mismatch"), job=job_id)
            return
        if key:
            try:
                if len(self.store.checkpoint_keys(job_id)) < limits.MAX_CHECKPOINTS_PER_JOB:
                    self.store.put_checkpoint(job_id, key, data)
            except OSError as e:  # lost: the job recomputes from an earlier one if it must
                self._storage_failed(e)
            return
        rec = self.jobs[job_id]
        try:
            a4d.loads(data)  # never hand a client a result that does not load
        except Animate4DError as e:
            w.job = None
            self._finish(rec, FAILED, "bad_result", f"the worker sent an invalid result: {e}")
            return
        w.job = None
        try:
            self.store.put_result(job_id, data)
        except OSError as e:
            self._storage_failed(e)
            why = f"its result could not be stored ({e.strerror or e})"
            self.log(f"job {job_id}: {why}: back in the queue")
            self._requeue(job_id, why, counted=False)
            return
        rec.info.result_bytes = len(data)
        rec.result_sha256 = body.sha256
        self._finish(rec, DONE, None, None)

    def _w_checkpoint_get(self, w, env, body: wire.CheckpointGet):
        try:
            data = self.store.checkpoint(env.job, body.key) or b""
        except OSError:
            data = b""  # gone: the worker recomputes
        start = max(0, min(body.offset, len(data)))
        self._send(self.workers_sock, w.ident,
                   wire.Chunk(offset=start, total=len(data), key=body.key,
                              data=data[start : start + limits.CHUNK_BYTES],
                              sha256=hashlib.sha256(data).hexdigest()),
                   re=env.id, job=env.job)

    def _w_failed(self, w, env, body: wire.Failed):
        w.job = None
        rec = self.jobs[env.job]
        needs = max(rec.needs_gpu_memory, w.gpu_memory)
        if (body.code == OutOfGpuMemoryError.code and w.gpu_memory > 0
                and self._bigger_worker(rec, needs)):
            # Not the job's fault: a worker with more memory resumes it from its checkpoints.
            rec.needs_gpu_memory, rec.gpu_memory_message = needs, body.message[:2000]
            why = (f"out of GPU memory on worker {w.name} ({w.gpu_memory / 2**30:.1f} GiB): "
                   "for a worker with more")
            self.log(f"job {env.job[:8]}: {why}")
            self._requeue(env.job, why, counted=False)
            self._dispatch()
            return
        self._finish(rec, FAILED, body.code[:64], body.message[:2000])

    def _runs(self, w: WorkerConn, rec: JobRecord, needs: int | None = None) -> bool:
        """Whether worker `w` may take job `rec`: it runs the preset (in mesh mode for a mesh
        job) and, for a job that ran out of GPU memory on a worker with `needs` bytes
        (default: the job's record), has GPU_MEMORY_MARGIN more."""
        needs = rec.needs_gpu_memory if needs is None else needs
        offered = w.mesh_presets if rec.mesh else w.presets
        return rec.options.preset in offered and (
            needs == 0 or w.gpu_memory >= needs + GPU_MEMORY_MARGIN)

    def _bigger_worker(self, rec: JobRecord, needs: int) -> bool:
        """Whether a connected worker that is not silent may take `rec` (`_runs`)."""
        now = time.monotonic()
        return any(now - w.last_seen <= self.dead_after_s / 2 and self._runs(w, rec, needs)
                   for w in self.workers.values())

    def _fail_stranded(self, now: float) -> None:
        """Fail the queued jobs that have waited `stranded_s` for more GPU memory than any
        connected worker has (the bigger workers left), with what the worker they ran out on
        said."""
        # Every tick: only the queued jobs are read, not every job the store keeps.
        waiting = [rec for rec in map(self.jobs.__getitem__, self.queue)
                   if rec.needs_gpu_memory > 0
                   and not self._bigger_worker(rec, rec.needs_gpu_memory)]
        for job_id in set(self._stranded) - {rec.info.id for rec in waiting}:
            del self._stranded[job_id]
        for rec in waiting:
            job_id = rec.info.id
            if now - self._stranded.setdefault(job_id, now) >= self.stranded_s:
                del self._stranded[job_id]
                self.queue.remove(job_id)
                self._finish(rec, FAILED, OutOfGpuMemoryError.code,
                             (f"{rec.gpu_memory_message}; no worker with more GPU memory has "
                              f"been connected for {self.stranded_s:.0f} s")[:2000])

    def _w_cancelled(self, w, env, body):
        w.job = None
        self._finish(self.jobs[env.job], CANCELLED, None, None)

    def _w_hand_back(self, w: WorkerConn, env, body: wire.HandBack):
        """The worker leaves: nothing more is assigned to it, and the job it holds (by this
        server's account, whatever the message names) goes back to the front of the queue at
        once. Leaving is not a failure: the attempt does not count towards --max-attempts."""
        self.workers.pop(w.ident, None)
        job_id, w.job = w.job, None
        reason = body.reason[:200] or "no reason given"
        self.log(f"worker {w.name} left ({reason})"
                 + (f", handing back job {job_id[:8]}" if job_id else ""))
        rec = self.jobs.get(job_id) if job_id else None
        if rec is not None and rec.info.state == RUNNING:
            self._requeue(job_id, f"handed back by worker {w.name} ({reason})", counted=False)
        self._send(self.workers_sock, w.ident, wire.Ok(), re=env.id)
        self._dispatch()

    _worker_handlers = {
        wire.Heartbeat: _w_heartbeat, wire.Progress: _w_progress, wire.Preview: _w_preview,
        wire.Chunk: _w_chunk, wire.CheckpointGet: _w_checkpoint_get, wire.Failed: _w_failed,
        wire.Cancelled: _w_cancelled,
    }

    def _worker_lost(self, w: WorkerConn, why: str, *, counted: bool = True) -> None:
        self.workers.pop(w.ident, None)
        self.log(f"worker {w.name} lost: {why}")
        if w.job is not None:
            # A worker that said nothing after the assignment was likely dead before it: that
            # attempt is not counted (unless it keeps happening: a job that kills its worker
            # on arrival must still end).
            answered = w.last_seen > w.assigned_at
            self._requeue(w.job, f"worker {w.name} lost ({why})",
                          counted=counted and answered, silent=counted and not answered)
            w.job = None

    def _drop_uploads(self, job_id: str) -> None:
        for key in [k for k in self.uploads if k[0] == job_id]:
            del self.uploads[key]

    def _requeue(self, job_id: str, why: str, *, counted: bool = True,
                 silent: bool = False) -> None:
        """Back to the queue after its worker lost it; `counted` when that counts against
        --max-attempts (a worker that died holding it), not when the server is at fault or
        the worker never answered after the assignment (`silent`)."""
        rec = self.jobs.get(job_id)
        if rec is None or rec.info.state != RUNNING:
            return
        self._drop_uploads(job_id)
        if counted:
            rec.losses += 1
        else:
            rec.info.attempts = max(0, rec.info.attempts - 1)
            rec.silent_losses += silent
        if job_id in self._cancelling:
            self._finish(rec, CANCELLED, None, None)
        elif rec.losses >= self.max_attempts or rec.silent_losses >= 2 * self.max_attempts + 2:
            self._finish(rec, FAILED, "worker_lost",
                         f"{why}; gave up after {rec.losses} attempts (each time its worker died)")
        else:
            rec.info.state = QUEUED
            self.store.log(job_id, f"requeued: {why}")
            self.queue.push(rec.owner, job_id, front=True)
            self._dirty.add(job_id)
            self._publish(job_id, wire.JobState(job=self._info(rec)))

    def _dispatch(self) -> None:
        if self.storage_error is not None:
            return  # a result could not be kept: jobs wait in the queue until it can
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.job is not None or not len(self.queue):
                continue
            if now - w.last_seen > self.dead_after_s / 2:
                continue  # silent for a while: likely dead, it gets nothing until it speaks
            job_id = self.queue.pop(lambda j, w=w: self._runs(w, self.jobs[j]))
            if job_id is None:
                continue
            rec = self.jobs[job_id]
            try:
                image = self.store.image(job_id)
                checkpoints = self.store.checkpoint_keys(job_id)
                mesh = self._stored_mesh(job_id) if rec.mesh else None
            except OSError as e:
                rec.info.state = RUNNING  # for _finish's bookkeeping; it never ran
                self._finish(rec, FAILED, StoreDamagedError.code,
                             f"its input image is gone from the server's store "
                             f"({e.strerror or e}): submit it again")
                continue
            rec.info.state = RUNNING
            rec.info.started = rec.info.started or time.time()
            rec.info.attempts += 1
            rec.info.stage, rec.info.step, rec.info.total = None, 0, 0
            w.job, w.assigned_at = job_id, time.monotonic()
            self._save(rec, durable=False)
            self.store.log(job_id, f"attempt {rec.info.attempts} on worker {w.name}")
            ok = self._send(self.workers_sock, w.ident, wire.Assign(
                options=rec.options, image=image, image_name=rec.image_name,
                attempt=rec.info.attempts, checkpoints=checkpoints, mesh=mesh,
            ), job=job_id)
            if not ok:  # it never had the job
                self._worker_lost(w, "unreachable", counted=False)
                continue
            self._publish(job_id, wire.JobState(job=self._info(rec)))

    def _finish(self, rec: JobRecord, state: str, code, message) -> None:
        rec.info.state = state
        rec.info.finished = time.time()
        rec.info.error_code, rec.info.error_message = code, message
        self._cancelling.discard(rec.info.id)
        self._drop_uploads(rec.info.id)
        if self._save(rec):
            self._dirty.discard(rec.info.id)
        self.store.log(rec.info.id, state + (f": {code}: {message}" if code else ""))
        self._publish(rec.info.id, wire.JobState(job=self._info(rec)))
        self._dispatch()

    def _forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.subscribers.pop(job_id, None)
        self._sha.pop(job_id, None)
        self._dirty.discard(job_id)
        try:
            self.store.delete(job_id)
        except OSError as e:
            self.log(f"store: could not delete job {job_id}'s files: {e}")
