"""Checkpoints: named blobs a pipeline writes as it goes and reads back when a job resumes.

The worker's store sends them to the server (so a job survives its worker); the CLI's keeps
nothing; a folder's (`FolderCheckpoints`) lets a later process resume a stopped one. A pipeline
packs its state with `pack_state` (arrays and plain values).
"""

from __future__ import annotations

import hashlib
import json
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


class RunCheckpoints(FolderCheckpoints):
    """A local run's checkpoints (`animate4d run`'s OUT/.checkpoints): kept when the run stops
    (Ctrl-C, a crash, a lost machine) so that the same command resumes it, removed once its
    result is written. They are tied to the run's inputs by `fingerprint`: a different run
    in the same folder empties them and starts afresh."""

    MARK = "run.sha256"

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        folder = Path(folder)
        mark = folder / self.MARK
        if folder.is_dir() and (not mark.is_file() or mark.read_text() != fingerprint):
            self._empty(folder)
        super().__init__(folder)
        mark.write_text(fingerprint)

    @property
    def holds(self) -> bool:
        """Whether there is anything to resume from."""
        return any(p.name != self.MARK and not p.name.endswith(".part")
                   for p in self.folder.iterdir())

    def remove(self) -> None:
        self._empty(self.folder)
        self.folder.rmdir()

    @staticmethod
    def _empty(folder: Path) -> None:
        # Files only: the folder is ours, nothing in it is anyone else's.
        for path in folder.iterdir():
            if path.is_file():
                path.unlink()


def fingerprint(*parts) -> str:
    """What identifies a run's inputs: bytes as they are, anything else as sorted JSON."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(
            part, sort_keys=True, default=str).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


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
