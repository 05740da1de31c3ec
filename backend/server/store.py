"""The job store on disk. Every write is atomic (temporary file, fsync, rename), so a crash at
any moment leaves each file either old or new, never half-written.

    STORE/jobs/<id>/job.json           the record: owner, options, state (JobInfo)
    STORE/jobs/<id>/input              the submitted image bytes
    STORE/jobs/<id>/mesh               mesh mode: the submitted mesh (wire.MeshInput, msgpack)
    STORE/jobs/<id>/checkpoints/<key>  pipeline checkpoints uploaded by workers
    STORE/jobs/<id>/result.a4d         the result, once done
    STORE/jobs/<id>/log.txt            one line per event (state changes, errors)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import msgspec

from animate4d.protocol.options import JobOptions
from animate4d.protocol.wire import FINAL_STATES, JobInfo

KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class JobRecord(msgspec.Struct, kw_only=True):
    info: JobInfo
    owner: str
    options: JobOptions
    image_name: str
    submit_id: str = ""  # the client's message id: a retried submit finds its job again
    mesh: bool = False  # mesh mode: the job animates the mesh stored beside its input


_json = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(JobRecord)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Old or new, never half-written, even if the process dies. `durable` also survives a
    power cut (fsync); it costs milliseconds, so it is kept for what was promised to someone:
    an accepted job, a final state, a result."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not ID_RE.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.jobs_dir / job_id

    # -- records ------------------------------------------------------------------------
    def create(self, record: JobRecord, image: bytes, mesh: bytes | None = None) -> None:
        d = self.job_dir(record.info.id)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.jobs_dir))
        (tmp / "checkpoints").mkdir()
        atomic_write(tmp / "input", image)
        if mesh is not None:
            atomic_write(tmp / "mesh", mesh)
        atomic_write(tmp / "job.json", _json.encode(record))
        os.replace(tmp, d)  # the job appears whole or not at all
        self.log(record.info.id, f"submitted by {record.owner[:12]}: {record.options.preset}")

    def save(self, record: JobRecord, *, durable: bool = True) -> None:
        """`durable=False` for transient states (running, progress): after a crash a running
        job is requeued from whatever record is on disk anyway."""
        atomic_write(self.job_dir(record.info.id) / "job.json", _json.encode(record),
                     durable=durable)

    def load_all(self) -> list[JobRecord]:
        records = []
        for d in sorted(self.jobs_dir.iterdir()):
            if d.name.startswith(".new-"):
                shutil.rmtree(d, ignore_errors=True)  # a submit interrupted before it was accepted
                continue
            try:
                records.append(_record_decoder.decode((d / "job.json").read_bytes()))
            except (OSError, msgspec.DecodeError) as e:
                print(f"store: skipping unreadable job {d.name}: {e}")
        return records

    def image(self, job_id: str) -> bytes:
        return (self.job_dir(job_id) / "input").read_bytes()

    def mesh(self, job_id: str) -> bytes | None:
        p = self.job_dir(job_id) / "mesh"
        return p.read_bytes() if p.exists() else None

    def delete(self, job_id: str) -> None:
        d = self.job_dir(job_id)
        if d.exists():
            trash = self.jobs_dir / f".new-del-{job_id}"
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def log(self, job_id: str, line: str) -> None:
        with open(self.job_dir(job_id) / "log.txt", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    # -- checkpoints and results --------------------------------------------------------
    def put_checkpoint(self, job_id: str, key: str, data: bytes) -> None:
        if not KEY_RE.match(key):
            raise ValueError(f"bad checkpoint key {key!r}")
        # Not durable: a checkpoint lost in a power cut only means recomputing from an earlier one.
        atomic_write(self.job_dir(job_id) / "checkpoints" / key, data, durable=False)

    def checkpoint_keys(self, job_id: str) -> list[str]:
        d = self.job_dir(job_id) / "checkpoints"
        return sorted(p.name for p in d.iterdir() if KEY_RE.match(p.name)) if d.exists() else []

    def checkpoint(self, job_id: str, key: str) -> bytes | None:
        if not KEY_RE.match(key):
            return None
        p = self.job_dir(job_id) / "checkpoints" / key
        return p.read_bytes() if p.exists() else None

    def put_result(self, job_id: str, data: bytes) -> None:
        atomic_write(self.job_dir(job_id) / "result.a4d", data)

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.a4d"

    def expired(self, records, retention_s: float, now: float) -> list[str]:
        return [r.info.id for r in records
                if r.info.state in FINAL_STATES and r.info.finished is not None
                and now - r.info.finished > retention_s]
