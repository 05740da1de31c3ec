"""Checkpoints: named blobs a pipeline writes as it goes and reads back when a job resumes.

The worker's store sends them to the server (so a job survives its worker); the CLI's keeps
nothing; a folder's (`FolderCheckpoints`) lets a later process resume a stopped one. A pipeline
packs its state with `pack_state` (arrays and plain values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import msgspec
import numpy as np

from animate4d.protocol import arrays


class Checkpoints(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class NoCheckpoints:
    """For runs that cannot resume (the CLI's `run`)."""

    def get(self, key: str) -> bytes | None:
        return None

    def put(self, key: str, data: bytes) -> None:
        pass


class MemoryCheckpoints(dict):
    """A dict of blobs: for tests, and to hand a worker's fetched checkpoints to a pipeline."""

    def put(self, key: str, data: bytes) -> None:
        self[key] = data


class FolderCheckpoints:
    """One file per blob in a folder, each replaced whole (written beside, then renamed), so a
    process stopped mid-write leaves the previous blob: a later process resumes from them."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / quote(key, safe="")

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        part = path.with_name(path.name + ".part")
        part.write_bytes(data)
        os.replace(part, path)


class _State(msgspec.Struct):
    arrays: dict[str, arrays.Array] = {}
    values: dict[str, object] = {}


def pack_state(**items) -> bytes:
    packed = _State()
    for k, v in items.items():
        if isinstance(v, np.ndarray):
            packed.arrays[k] = arrays.pack(v)
        else:
            packed.values[k] = v
    return msgspec.msgpack.encode(packed)


def unpack_state(data: bytes) -> dict:
    state = msgspec.msgpack.decode(data, type=_State)
    out = dict(state.values)
    out.update({k: arrays.unpack(a, name=k) for k, a in state.arrays.items()})
    return out
