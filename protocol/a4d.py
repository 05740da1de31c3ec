"""The .a4d file: one AnimatedMesh as one MessagePack map (spec in protocol/README.md).

Arrays are stored as {dtype, shape, data} with fixed little-endian dtypes, so a save/load round
trip is bit-exact and any MessagePack library can read the file. The same bytes are the body of
a finished job's result on the wire.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from . import arrays, limits
from .arrays import Array
from .errors import Animate4DError, FileFormatError, LimitExceededError
from .mesh import AnimatedMesh

FORMAT = "animate4d.animated_mesh"
VERSION = 1

# field -> stored dtype (the reader accepts exactly these)
_DTYPES = {
    "vertices": "<f4",
    "faces": "<u4",
    "frames": "<f4",
    "colors": "|u1",
    "uvs": "<f4",
    "transform": "<f8",
}


class _Header(msgspec.Struct):
    format: str
    version: int


class _File(msgspec.Struct):
    format: str
    version: int
    vertices: Array
    faces: Array
    frames: Array
    fps: float
    transform: Array
    colors: Array | None = None
    uvs: Array | None = None
    metadata: dict[str, Any] = {}


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_decoder = msgspec.msgpack.Decoder(_File)


def _pack(name: str, a: np.ndarray | None) -> Array | None:
    return None if a is None else arrays.pack(a, _DTYPES[name])


def _unpack(name: str, arr: Array | None) -> np.ndarray | None:
    return None if arr is None else arrays.unpack(arr, _DTYPES[name], name=name)


def dumps(mesh: AnimatedMesh) -> bytes:
    f = _File(
        format=FORMAT,
        version=VERSION,
        vertices=_pack("vertices", mesh.vertices),
        faces=_pack("faces", mesh.faces),
        frames=_pack("frames", mesh.frames),
        fps=float(mesh.fps),
        transform=_pack("transform", mesh.transform),
        colors=_pack("colors", mesh.colors),
        uvs=_pack("uvs", mesh.uvs),
        metadata=mesh.metadata,
    )
    return _encoder.encode(f)


def loads(data: bytes | bytearray | memoryview) -> AnimatedMesh:
    """Parse .a4d bytes; every failure is a FileFormatError/LimitExceededError with a reason."""
    if len(data) > limits.MAX_A4D_BYTES:
        raise LimitExceededError(
            f"mesh data is {len(data)} bytes, more than the limit of {limits.MAX_A4D_BYTES}"
        )
    if len(data) == 0:
        raise FileFormatError("the data is empty, not an animate4d mesh")
    try:
        head = _header_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise FileFormatError(
            f"not an animate4d mesh (.a4d): {_reason(e)}",
            hint="the file is corrupt or truncated, or is another kind of file",
        ) from None
    if head.format != FORMAT:
        raise FileFormatError(f"not an animate4d mesh: format is {head.format!r}")
    if head.version > VERSION:
        raise FileFormatError(
            f"this mesh has format version {head.version}; this animate4d reads up to {VERSION}",
            hint="upgrade animate4d",
        )
    try:
        f = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise FileFormatError(f"corrupt animate4d mesh: {_reason(e)}") from None
    try:
        return AnimatedMesh(
            vertices=_unpack("vertices", f.vertices),
            faces=_unpack("faces", f.faces),
            frames=_unpack("frames", f.frames),
            fps=f.fps,
            transform=_unpack("transform", f.transform),
            colors=_unpack("colors", f.colors),
            uvs=_unpack("uvs", f.uvs),
            metadata=f.metadata,
        )
    except Animate4DError as e:
        if isinstance(e, FileFormatError | LimitExceededError):
            raise
        raise FileFormatError(f"the mesh in this file is invalid: {e}") from None


def _reason(e: Exception) -> str:
    text = str(e)
    return text[:200] + ("..." if len(text) > 200 else "")


def save(mesh: AnimatedMesh, path: str | os.PathLike) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    path = Path(path)
    data = dumps(mesh)
    # A fresh name opened exclusively: the file gets the user's usual permissions (umask),
    # unlike mkstemp's owner-only ones, which would hide an artist's result from the team.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike) -> AnimatedMesh:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {path}: {e.strerror}") from None
    if size > limits.MAX_A4D_BYTES:
        raise LimitExceededError(
            f"{path} is {size} bytes, more than the limit of {limits.MAX_A4D_BYTES} for .a4d files"
        )
    try:
        return loads(path.read_bytes())
    except FileFormatError as e:
        raise FileFormatError(f"{path}: {e.message}", hint=e.hint) from None
