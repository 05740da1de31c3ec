"""The job store on disk. Every write is atomic (temporary file, fsync, rename), so a crash at
any moment leaves each file either old or new, never half-written.

    STORE/jobs/<id>/job.json           the record: owner, options, state (JobInfo)
    STORE/jobs/<id>/input              the submitted image bytes
    STORE/jobs/<id>/mesh               mesh mode: the submitted mesh (wire.MeshInput, msgpack)
    STORE/jobs/<id>/checkpoints/<key>  pipeline checkpoints uploaded by workers
    STORE/jobs/<id>/result.a4d         the result, once done
    STORE/jobs/<id>/log.txt            one line per event (state changes, errors)
    STORE/quarantine/<name>            folders under jobs/ whose name is not a job id

The folder's name is the job's id. A job.json that cannot be read is kept beside as
job.json.damaged and the job is shown as failed (`store_damaged`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import msgspec

from animate4d.protocol.errors import StoreDamagedError
from animate4d.protocol.options import JobOptions
from animate4d.protocol.wire import FAILED, FINAL_STATES, STATES, JobInfo

KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class JobRecord(msgspec.Struct, kw_only=True):
    info: JobInfo
    owner: str
    options: JobOptions
    image_name: str
    submit_id: str = ""  # the client's message id: a retried submit finds its job again
    # Workers that died holding the job (what --max-attempts counts; a server restart or an
    # assignment the worker never acknowledged is not one).
    losses: int = 0
    silent_losses: int = 0  # workers lost that never answered after being given the job
    result_sha256: str = ""  # recorded when the result was uploaded, checked when it is served
    mesh: bool = False  # mesh mode: the job animates the mesh stored beside its input
    # It ran out of GPU memory on a worker with this many bytes: only a worker with more
    # takes it again (0: any); what that worker said, the job's failure if none is left.
    needs_gpu_memory: int = 0
    gpu_memory_message: str = ""


_json = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(JobRecord)
TMP_SUFFIX = ".tmp"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Old or new, never half-written, even if the process dies. `durable` also survives a
    power cut (fsync); it costs milliseconds, so it is kept for what was promised to someone:
    an accepted job, a final state, a result."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
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
        self.quarantine_dir = self.root / "quarantine"

    def job_dir(self, job_id: str) -> Path:
        if not ID_RE.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.jobs_dir / job_id

    # -- records ------------------------------------------------------------------------
    def create(self, record: JobRecord, image: bytes, mesh: bytes | None = None) -> None:
        d = self.job_dir(record.info.id)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.jobs_dir))
        try:
            (tmp / "checkpoints").mkdir()
            atomic_write(tmp / "input", image)
            if mesh is not None:
                atomic_write(tmp / "mesh", mesh)
            atomic_write(tmp / "job.json", _json.encode(record))
            os.replace(tmp, d)  # the job appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.log(record.info.id, f"submitted by {record.owner[:12]}: {record.options.preset}")

    def save(self, record: JobRecord, *, durable: bool = True) -> None:
        """`durable=False` for transient states (running, progress): after a crash a running
        job is requeued from whatever record is on disk anyway."""
        atomic_write(self.job_dir(record.info.id) / "job.json", _json.encode(record),
                     durable=durable)

    def load_all(self) -> tuple[list[JobRecord], list[str]]:
        """Every job in the store, and a line for each problem met (for the server's log).

        Leftovers of interrupted writes are removed; a folder whose name is not a job id is
        moved to quarantine/; a job.json that cannot be read becomes a failed job
        (`store_damaged`) and the file is kept as job.json.damaged."""
        records, problems = [], []
        for d in sorted(self.jobs_dir.iterdir()):
            if d.name.startswith(".new-"):
                shutil.rmtree(d, ignore_errors=True)  # a submit interrupted before it was accepted
                continue
            if not ID_RE.match(d.name) or not d.is_dir():
                problems.append(f"{d.name!r} is not a job folder: moved to {self._quarantine(d)}")
                continue
            self._remove_leftovers(d)
            try:
                rec = _record_decoder.decode((d / "job.json").read_bytes())
                if rec.info.state not in STATES:
                    raise ValueError(f"unknown state {rec.info.state[:32]!r}")
            except (OSError, ValueError, msgspec.DecodeError) as e:
                problems.append(f"job {d.name}: unreadable job.json ({str(e)[:200]}): "
                                f"shown as failed (store_damaged)")
                records.append(self._damaged(d, f"its record could not be read: {str(e)[:200]}"))
                continue
            if rec.info.id != d.name:
                problems.append(f"job {d.name}: its record said id {rec.info.id[:80]!r}; the "
                                f"folder's name is the id")
                rec.info.id = d.name
            records.append(rec)
        return records, problems

    def _quarantine(self, path: Path) -> Path:
        self.quarantine_dir.mkdir(exist_ok=True)
        dest = self.quarantine_dir / f"{path.name[:80]}.{time.time_ns()}"
        os.replace(path, dest)
        return dest

    def _remove_leftovers(self, d: Path) -> None:
        """Temporary files of writes a crash interrupted (they are never read)."""
        for folder in (d, d / "checkpoints"):
            if folder.is_dir():
                for p in folder.glob("*" + TMP_SUFFIX):
                    p.unlink(missing_ok=True)

    def _damaged(self, d: Path, why: str) -> JobRecord:
        """A failed record in place of one that cannot be read; the owner is kept when the
        damaged file still names one (so that its owner sees what happened)."""
        raw, kept = d / "job.json", d / "job.json.damaged"
        if raw.exists():
            os.replace(raw, kept)
        owner = ""
        with contextlib.suppress(OSError, msgspec.DecodeError):
            doc = msgspec.json.decode(kept.read_bytes())
            if isinstance(doc, dict) and isinstance(doc.get("owner"), str):
                owner = doc["owner"][:128]
        now = time.time()
        rec = JobRecord(
            info=JobInfo(id=d.name, state=FAILED, preset="preview", prompt="", created=now,
                         finished=now, error_code=StoreDamagedError.code,
                         error_message=f"this job's files in the store are damaged: {why}"),
            owner=owner, options=JobOptions(), image_name="image")
        with contextlib.suppress(OSError):  # shown as failed from memory all the same
            self.save(rec)
        return rec

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

    def log(self, job_id: str, line: str) -> bool:
        """Best effort: a job's log line is lost rather than the job (disk full, folder gone)."""
        try:
            with open(self.job_dir(job_id) / "log.txt", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            return True
        except OSError:
            return False

    def restore_dirs(self, job_id: str) -> None:
        """Make a job's folders again (after the store folder was removed under the server)."""
        (self.job_dir(job_id) / "checkpoints").mkdir(parents=True, exist_ok=True)

    def probe(self) -> None:
        """Raise OSError unless the store can be written right now."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / ".probe", b"ok", durable=False)

    # -- checkpoints and results --------------------------------------------------------
    def put_checkpoint(self, job_id: str, key: str, data: bytes) -> None:
        if not KEY_RE.match(key) or key.endswith(TMP_SUFFIX):
            raise ValueError(f"bad checkpoint key {key!r}")
        # Not durable: a checkpoint lost in a power cut only means recomputing from an earlier one.
        atomic_write(self.job_dir(job_id) / "checkpoints" / key, data, durable=False)

    def checkpoint_keys(self, job_id: str) -> list[str]:
        d = self.job_dir(job_id) / "checkpoints"
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir()
                      if KEY_RE.match(p.name) and not p.name.endswith(TMP_SUFFIX))

    def checkpoint(self, job_id: str, key: str) -> bytes | None:
        if not KEY_RE.match(key) or key.endswith(TMP_SUFFIX):
            return None
        p = self.job_dir(job_id) / "checkpoints" / key
        return p.read_bytes() if p.exists() else None

    def put_result(self, job_id: str, data: bytes) -> None:
        atomic_write(self.job_dir(job_id) / "result.a4d", data)

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.a4d"

    def has_input(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "input").is_file()

    def drop_result(self, job_id: str) -> None:
        self.result_path(job_id).unlink(missing_ok=True)

    def expired(self, records, retention_s: float, now: float) -> list[str]:
        return [r.info.id for r in records
                if r.info.state in FINAL_STATES and r.info.finished is not None
                and now - r.info.finished > retention_s]
