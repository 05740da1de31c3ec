"""The client the CLI and the Blender extension share: connect, submit, watch, fetch.

Requests are matched to replies by message id; events that arrive meanwhile (progress, job
state, previews) are queued for `events()`. While waiting, the client pings the server about
once a second; a server silent for three heartbeats counts as lost, and the client reconnects
with back-off, says hello again and re-attaches the jobs it was watching. A server that
restarted quickly enough to answer the pings itself says it does not know this connection
(`pong` with `known` false); the client then says hello and re-attaches too. A submit that is
retried after a reconnect carries the same message id, so the server returns the same job
instead of making a second one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator

import zmq

from . import a4d, keys, limits, wire
from .errors import Animate4DError
from .mesh import AnimatedMesh
from .options import JobOptions


class ServerError(Animate4DError):
    """The server's `error` reply: `code` is the server's code."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class ConnectionLost(Animate4DError):
    code = "connection_lost"


DEFAULT_SERVER = "tcp://127.0.0.1:5555"

# What the connection's monitor reports, to tell "no server there" from "a server that
# refused this client's keys" when no answer comes.
_MONITORED = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Client:
    def __init__(
        self,
        address: str = DEFAULT_SERVER,
        *,
        server_key: bytes | None = None,
        keypair: tuple[bytes, bytes] | None = None,
        name: str = "animate4d-client",
        timeout_s: float = 10.0,
        heartbeat_s: float = 1.0,
        reconnect_tries: int = 5,
        allow_insecure_remote: bool = False,
    ):
        if server_key is None and not keys.is_loopback(address) and not allow_insecure_remote:
            raise Animate4DError(
                f"{address} is not on this machine, and no server key was given",
                hint="pass the server's public key (--server-key) and your key pair (--key)",
            )
        if (server_key is None) != (keypair is None):
            raise Animate4DError("CURVE needs both the server's public key and your key pair")
        self.address, self.server_key, self.keypair = address, server_key, keypair
        self.name, self.timeout_s, self.heartbeat_s = name, timeout_s, heartbeat_s
        self.reconnect_tries = reconnect_tries
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._seen: set[int] = set()  # monitor events seen on the current connection
        self.welcome: wire.Welcome | None = None
        self.attached: set[str] = set()
        self._events: collections.deque = collections.deque()
        self._last_heard = 0.0
        self._next_ping = 0.0
        self._unknown = False  # the server has said it does not know this connection

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> wire.Welcome:
        self._open()
        self.welcome = self._request(wire.Hello(client=self.name), retry=False)
        return self.welcome

    def _open(self) -> None:
        self.close()
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_BYTES)
        # A DEALER with no live connection (say, a refused CURVE handshake) blocks on send:
        # never wait longer than a request may take.
        s.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        if self.server_key is not None:
            keys.apply_client_curve(s, self.server_key, self.keypair)
        self._monitor, self._seen = s.get_monitor_socket(_MONITORED), set()
        s.connect(self.address)
        self.sock = s
        self._last_heard = time.monotonic()
        self._next_ping = self._last_heard + self.heartbeat_s

    def _resync(self) -> None:
        """Hello and attach again on the open connection (the server forgot them)."""
        self._unknown = False
        try:
            self.welcome = self._request(wire.Hello(client=self.name), retry=False)
            for job in list(self.attached):
                self._request(wire.Attach(), job=job, retry=False)
        except (ConnectionLost, ServerError):
            self._reconnect()

    def _reconnect(self) -> None:
        delay = 0.25
        for _ in range(self.reconnect_tries):
            try:
                self._open()
                self.welcome = self._request(wire.Hello(client=self.name), retry=False)
                for job in list(self.attached):
                    self._request(wire.Attach(), job=job, retry=False)
                return
            except (ConnectionLost, ServerError):
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
        raise ConnectionLost(
            f"lost the connection to {self.address} and could not get it back",
            hint="is `animate4d serve` running there? Jobs keep running on the server; "
                 "attach again later by job id",
        )

    def close(self) -> None:
        if self.sock is not None:
            if self._monitor is not None:
                self.sock.disable_monitor()
                self._monitor.close(0)
                self._monitor = None
            self.sock.close(0)
            self.sock = None

    def _silence(self, what: str) -> ConnectionLost:
        """Why the server did not answer, as far as the connection's own events tell."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            self._seen.add(recv_monitor_message(self._monitor)["event"])
        seen = self._seen
        failed = seen & {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                         zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH}
        if zmq.EVENT_CONNECTED not in seen:
            return ConnectionLost(f"{what}: nothing is listening there",
                                  hint="is `animate4d serve` running there, on that port?")
        if failed or zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen:
            if self.server_key is None:
                return ConnectionLost(
                    f"{what}: a server is there but did not accept a connection without keys",
                    hint="it uses keys (serve --keys): pass its public key with --server-key "
                         "and your key pair with --key")
            return ConnectionLost(
                f"{what}: the server there did not accept this client's keys",
                hint="check that --server-key is that server's public key and that your "
                     "public key is in its clients/ (or admins/) folder")
        return ConnectionLost(f"{what}: connected, but the server did not answer",
                              hint="is it an animate4d server, and not overloaded?")

    def __enter__(self) -> Client:
        if self.sock is None:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request/reply ------------------------------------------------------------------
    def _request(self, body: wire.Body, *, job: str | None = None, retry: bool = True
                 ) -> wire.Body:
        if self.sock is None:
            self._open()
        msg_id = wire.new_id()
        data = wire.encode(body, id=msg_id, job=job)
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                self.sock.send(data)
            except zmq.Again:
                raise self._silence(f"cannot reach {self.address}") from None
            deadline = time.monotonic() + self.timeout_s
            while True:
                env, reply = self._recv(deadline)
                if env is None:
                    break
                if env.re == msg_id:
                    if isinstance(reply, wire.Error):
                        raise ServerError(reply.code, reply.message)
                    return reply
                if env.re is None and isinstance(reply, wire.Error):
                    raise ServerError(reply.code, reply.message)
                if env.re is None:
                    self._events.append((env, reply))
            if attempt + 1 < attempts:
                self._reconnect()
        raise self._silence(f"no answer from {self.address} in {self.timeout_s:.0f} s")

    def _recv(self, deadline: float):
        """Next message, or (None, None) at the deadline or when the server has gone silent.
        Pings go out every heartbeat across calls (a caller polling in short windows, as the
        Blender extension does, still keeps the server's attention)."""
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None, None
            wait = min(deadline, self._next_ping) - now
            if self.sock.poll(max(1, int(wait * 1000))):
                data = self.sock.recv()
                self._last_heard = time.monotonic()
                try:
                    env, body = wire.decode(data)
                except wire.WireError:
                    continue  # not something a client can act on
                if isinstance(body, wire.Pong) and not body.known:
                    self._unknown = True
                return env, body
            if time.monotonic() >= self._next_ping:
                with contextlib.suppress(zmq.Again):  # nowhere to send: silence counts below
                    self.sock.send(wire.encode(wire.Ping()), zmq.NOBLOCK)
                self._next_ping = time.monotonic() + self.heartbeat_s
                if time.monotonic() - self._last_heard > 3 * self.heartbeat_s:
                    return None, None

    # -- operations ---------------------------------------------------------------------
    def submit(self, image: bytes, options: JobOptions | None = None,
               image_name: str = "image", mesh: wire.MeshInput | None = None) -> wire.JobInfo:
        options = (options or JobOptions()).validate()
        if len(image) > limits.MAX_IMAGE_FILE_BYTES:
            raise Animate4DError(f"the image is larger than {limits.MAX_IMAGE_FILE_BYTES} bytes")
        # One message id for every retry: the server answers a repeat with the same job.
        reply = self._request(wire.Submit(image=image, image_name=image_name, options=options,
                                          mesh=mesh))
        self.attached.add(reply.job.id)
        return reply.job

    def status(self, job: str) -> wire.JobInfo:
        return self._request(wire.Status(), job=job).job

    def list(self) -> list[wire.JobInfo]:
        return self._request(wire.List()).jobs

    def attach(self, job: str) -> wire.JobInfo:
        info = self._request(wire.Attach(), job=job).job
        self.attached.add(job)
        return info

    def detach(self, job: str) -> None:
        self._request(wire.Detach(), job=job)
        self.attached.discard(job)

    def cancel(self, job: str) -> wire.JobInfo:
        return self._request(wire.Cancel(), job=job).job

    def delete(self, job: str) -> None:
        self._request(wire.Delete(), job=job)
        self.attached.discard(job)

    def events(self, timeout_s: float | None = None) -> Iterator[tuple[str, wire.Body]]:
        """(job id, event body) as they come; stops after `timeout_s` of nothing new (pongs
        are not news)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)
        while True:
            while self._events:
                env, body = self._events.popleft()
                yield env.job, body
                deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)
            if self._unknown:
                self._resync()
            env, body = self._recv(deadline)
            if env is None:
                if time.monotonic() - self._last_heard > 3 * self.heartbeat_s:
                    self._reconnect()
                    continue
                return
            if env.re is None and not isinstance(body, (wire.Pong, wire.Error)):
                yield env.job, body
                deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)

    def wait(self, job: str, on_event: Callable[[str, wire.Body], None] | None = None,
             timeout_s: float | None = None) -> wire.JobInfo:
        """Attach and follow the job until it is done, failed or cancelled, or until `timeout_s`
        (then the job's state at that moment is returned, whatever it is)."""
        info = self.attach(job)
        end = time.monotonic() + timeout_s if timeout_s else None
        while info.state not in wire.FINAL_STATES:
            # Ask for the state at least every 5 s: an event lost on the way (a slow reader's
            # full queue, a server that restarted) cannot leave the wait hanging.
            check = time.monotonic() + 5.0
            stop = check if end is None else min(check, end)
            for job_id, body in self.events(timeout_s=max(0.0, stop - time.monotonic())):
                if job_id == job:
                    if on_event is not None:
                        on_event(job_id, body)
                    if isinstance(body, wire.JobState):
                        info = body.job
                        if info.state in wire.FINAL_STATES:
                            return info
                if time.monotonic() >= stop:
                    break
            if end is not None and time.monotonic() >= end:
                break
            info = self.status(job)
        return info

    def fetch(self, job: str) -> bytes:
        """The result's .a4d bytes, pulled in chunks and checked against the server's sha256."""
        buf = bytearray()
        total, digest = None, ""
        while total is None or len(buf) < total:
            chunk = self._request(wire.Fetch(offset=len(buf), length=limits.CHUNK_BYTES),
                                  job=job)
            if chunk.offset != len(buf) or (total is not None and chunk.total != total):
                raise ConnectionLost("the result changed while it was being fetched")
            total, digest = chunk.total, chunk.sha256
            buf += chunk.data
            if not chunk.data and len(buf) < total:
                raise ConnectionLost("the server sent an empty chunk")
        data = bytes(buf)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ConnectionLost("the fetched result does not match its checksum; fetch again")
        return data

    def fetch_mesh(self, job: str) -> AnimatedMesh:
        return a4d.loads(self.fetch(job))
