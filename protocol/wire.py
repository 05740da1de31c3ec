"""Messages on the wire: one MessagePack map per ZeroMQ message (spec: protocol/README.md).

Every message is an envelope {v, type, id, re, job, body}. The envelope is decoded first, with
the body left raw, so that a wrong version or an unknown type gets a precise error; then the
body is decoded into the Struct registered for the type, which checks every field's type.
Anything that fails raises WireError with a stable code; nothing else escapes `decode`.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

import msgspec

from . import limits
from .arrays import Array
from .options import JobOptions

PROTOCOL_VERSION = 1

# Job states
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINAL_STATES = (DONE, FAILED, CANCELLED)


class WireError(Exception):
    """A message that cannot be accepted; `code` goes back in an `error` reply."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")


class Envelope(msgspec.Struct, kw_only=True):
    v: int
    type: str
    id: str
    body: msgspec.Raw = msgspec.Raw(b"\x80")
    re: str | None = None
    job: str | None = None


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of every message body. `TYPE` is the envelope's type string."""

    TYPE: ClassVar[str] = ""


# -- shared parts -------------------------------------------------------------------------
class JobInfo(msgspec.Struct, kw_only=True):
    id: str
    state: str
    preset: str
    prompt: str
    created: float
    started: float | None = None
    finished: float | None = None
    stage: str | None = None
    step: int = 0
    total: int = 0
    attempts: int = 0
    queue_position: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    result_bytes: int | None = None


# -- client <-> server --------------------------------------------------------------------
class Hello(Body):
    TYPE = "hello"
    client: str = ""


class Welcome(Body):
    TYPE = "welcome"
    server: str
    protocol: int
    presets: list[str]
    owner: str
    admin: bool = False
    heartbeat_s: float = 1.0
    limits: dict[str, int] = {}


class MeshView(msgspec.Struct):
    """A render of the input mesh and the camera (protocol.camera form) that made it."""

    png: bytes
    camera: dict


class MeshInput(msgspec.Struct):
    """Mesh mode: animate the artist's own mesh (its topology and UVs are kept)."""

    vertices: Array  # (N, 3) <f4, world space
    faces: Array  # (M, 3) <u4
    views: list[MeshView] = []
    pin: list[int] = []  # vertex ids held still (the root); empty: found on the mesh


class Submit(Body):
    TYPE = "submit"
    image: bytes
    image_name: str = "image"
    options: JobOptions = msgspec.field(default_factory=JobOptions)
    mesh: MeshInput | None = None


class Accepted(Body):
    TYPE = "accepted"
    job: JobInfo


class Status(Body):
    TYPE = "status"


class List(Body):
    TYPE = "list"


class Jobs(Body):
    TYPE = "jobs"
    jobs: list[JobInfo]


class Attach(Body):
    TYPE = "attach"


class Detach(Body):
    TYPE = "detach"


class Cancel(Body):
    TYPE = "cancel"


class Delete(Body):
    TYPE = "delete"


class Fetch(Body):
    TYPE = "fetch"
    offset: int = 0
    length: int = limits.CHUNK_BYTES


class Chunk(Body):
    """A piece of a file: a result (server -> client, worker -> server) or a checkpoint."""

    TYPE = "chunk"
    offset: int
    total: int
    data: bytes
    sha256: str = ""  # of the whole file
    key: str = ""  # which file: "" for the result, else the checkpoint key


class JobState(Body):
    """A job's full state: the reply to status/attach/cancel, and pushed on every change."""

    TYPE = "job"
    job: JobInfo


class Progress(Body):
    TYPE = "progress"
    stage: str
    step: int
    total: int
    losses: dict[str, float] = {}
    eta_s: float | None = None


class Preview(Body):
    TYPE = "preview"
    png: bytes


class Ok(Body):
    TYPE = "ok"


class Ping(Body):
    TYPE = "ping"


class Pong(Body):
    TYPE = "pong"
    # False when this connection has not said hello to this server (it restarted, or forgot
    # an idle client): the client says hello again and re-attaches its jobs.
    known: bool = True


class Error(Body):
    TYPE = "error"
    code: str
    message: str


# -- worker <-> server --------------------------------------------------------------------
class WorkerHello(Body):
    TYPE = "worker_hello"
    name: str
    presets: list[str]
    features: list[str] = []  # optional abilities, e.g. "mesh" (mesh mode)
    mesh_presets: list[str] = []  # the presets it runs in mesh mode ("mesh" alone: all)
    # Presets this worker could run but for models it lacks: preset -> missing roles. The
    # server names them to a client asking for such a preset when no worker offers it.
    missing: dict[str, list[str]] = {}
    # Bytes of GPU memory its jobs may use (0: no GPU, or not said). A job that ran out of
    # GPU memory on a worker goes to one with more, when one is connected.
    gpu_memory: int = 0


class Heartbeat(Body):
    """Both ways, about once a second. From a worker it says which job it is running."""

    TYPE = "heartbeat"
    running: str | None = None


class Assign(Body):
    TYPE = "assign"
    options: JobOptions
    image: bytes
    image_name: str
    attempt: int
    checkpoints: list[str] = []  # keys the worker may fetch to resume
    mesh: MeshInput | None = None  # mesh mode: the artist's mesh (then `image` is a render)


class CheckpointGet(Body):
    TYPE = "checkpoint_get"
    key: str
    offset: int = 0


class Failed(Body):
    TYPE = "failed"
    code: str
    message: str


class Cancelled(Body):
    TYPE = "cancelled"


class HandBack(Body):
    """The worker is leaving (stopped by its scheduler, or done with its share of jobs): the
    job it holds goes back to the queue unfinished, after the checkpoints it sent before."""

    TYPE = "hand_back"
    reason: str = ""


BODIES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Submit, Accepted, Status, List, Jobs, Attach, Detach, Cancel, Delete,
        Fetch, Chunk, JobState, Progress, Preview, Ok, Ping, Pong, Error, WorkerHello,
        Heartbeat, Assign, CheckpointGet, Failed, Cancelled, HandBack,
    )
}

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_body_decoders = {t: msgspec.msgpack.Decoder(cls) for t, cls in BODIES.items()}


def new_id() -> str:
    return secrets.token_hex(8)


def encode(body: Body, *, id: str | None = None, re: str | None = None,
           job: str | None = None) -> bytes:
    env = Envelope(v=PROTOCOL_VERSION, type=body.TYPE, id=id or new_id(),
                   body=msgspec.Raw(_encoder.encode(body)), re=re, job=job)
    return _encoder.encode(env)


def decode(data: bytes | memoryview, *, max_bytes: int = limits.MAX_MESSAGE_BYTES
           ) -> tuple[Envelope, Body]:
    """(envelope, body), or WireError(code, message) naming what is wrong."""
    if len(data) > max_bytes:
        raise WireError("limit_exceeded", f"message of {len(data)} bytes; limit {max_bytes}")
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise WireError("bad_message", f"bad envelope: {_short(e)}") from None
    except (msgspec.DecodeError, RecursionError) as e:
        raise WireError("bad_message", f"not a MessagePack envelope: {_short(e)}") from None
    if env.v != PROTOCOL_VERSION:
        raise WireError("version", f"protocol version {env.v} is not supported; this speaks "
                                   f"version {PROTOCOL_VERSION}")
    for name, value in (("id", env.id), ("re", env.re), ("job", env.job)):
        if value is not None and (len(value) > limits.MAX_ID_CHARS):
            raise WireError("bad_message", f"envelope '{name}' is longer than "
                                           f"{limits.MAX_ID_CHARS} characters")
    decoder = _body_decoders.get(env.type)
    if decoder is None:
        raise WireError("unknown_type", f"unknown message type {env.type[:40]!r}")
    try:
        body = decoder.decode(env.body)
    except msgspec.ValidationError as e:
        raise WireError("bad_message", f"bad '{env.type}' body: {_short(e)}") from None
    except (msgspec.DecodeError, RecursionError) as e:
        raise WireError("bad_message", f"undecodable '{env.type}' body: {_short(e)}") from None
    return env, body


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:200] + "..."
