"""Errors that cross a boundary (file, wire, CLI) carry a stable code and a human message.

The code is what programs match on (the server will send it in `error` messages, the Blender
panel picks its wording from it); the message says what was wrong and what to do about it.
"""

from __future__ import annotations


class Animate4DError(Exception):
    """Base class: `code` is stable across versions, `str(err)` is for people."""

    code = "internal"

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class InvalidMeshError(Animate4DError):
    """An AnimatedMesh whose arrays do not fit together or hold non-finite values."""

    code = "invalid_mesh"


class LimitExceededError(Animate4DError):
    """A size or count from outside is larger than protocol.limits allows."""

    code = "limit_exceeded"


class FileFormatError(Animate4DError):
    """A file (.a4d, camera JSON, ...) that cannot be read: corrupt, truncated, wrong kind."""

    code = "bad_file"


class InvalidImageError(Animate4DError):
    """An input image that cannot be used: unreadable, too small, too large, no foreground."""

    code = "bad_image"


class InvalidCameraError(Animate4DError):
    """A camera description that is incomplete or degenerate."""

    code = "bad_camera"


class InvalidRequestError(Animate4DError):
    """Job options out of range (frames, fps, amplitude, prompt length, ...)."""

    code = "bad_request"


class AddressError(Animate4DError):
    """An address that cannot be listened on (in use, not this machine's)."""

    code = "bad_address"


class CancelledError(Animate4DError):
    """The job was cancelled by its owner; raised inside the pipeline to unwind it."""

    code = "cancelled"


class PreemptedError(CancelledError):
    """The worker is stopping (its scheduler sent SIGTERM): raised inside the pipeline at its
    next step, where a stage saves a checkpoint of where it stands before unwinding; the job
    goes back to the server's queue and resumes there on another worker."""

    code = "preempted"


class MissingModelError(Animate4DError):
    """Pretrained weights a preset needs are not on this machine (names the role, where it
    looked and the command that fetches them)."""

    code = "missing_model"


class DivergedError(Animate4DError):
    """The optimisation lost its scene (non-finite values, or no density left anywhere): the
    job stops there instead of spending the rest of its steps on nothing, and its last good
    checkpoint is kept."""

    code = "diverged"


class OutOfGpuMemoryError(Animate4DError):
    """(job failure) The GPU ran out of memory: the message names the stage, the step and the
    memory the job had; the job's checkpoints are kept."""

    code = "gpu_memory"


class StorageFullError(Animate4DError):
    """(submit) The server's disk is full: no new job is accepted until it has room again;
    jobs already accepted are kept."""

    code = "storage_full"


class StorageError(Animate4DError):
    """(submit) The server cannot write its job store for another reason (named)."""

    code = "storage_error"


class StoreDamagedError(Animate4DError):
    """(job failure) The job's files in the server's store are damaged or gone."""

    code = "store_damaged"


class ResultDamagedError(Animate4DError):
    """(fetch) The stored result does not match the checksum recorded when it was uploaded
    (or cannot be read): it is never served; the job runs again when its input is kept."""

    code = "result_damaged"


class NotAllowedError(Animate4DError):
    """The key this connection authenticated with has been removed from the server's allowed
    folders since."""

    code = "not_allowed"
