"""Client commands: submit, status, attach, cancel, fetch, delete (all take --server)."""

from __future__ import annotations

import sys
from pathlib import Path

from animate4d.protocol import a4d, keys, wire
from animate4d.protocol.client import DEFAULT_SERVER, Client
from animate4d.protocol.errors import InvalidRequestError
from animate4d.protocol.options import PRESETS
from animate4d.protocol.text import printable

from . import args as args_types
from .local import add_job_options, image_bytes, job_options, print_warning


def _client(args) -> Client:
    server_key, keypair = keys.load_curve_files(args.server_key, args.key)
    client = Client(args.server, server_key=server_key, keypair=keypair,
                    name="animate4d-cli", timeout_s=args.timeout)
    client.connect()
    return client


def _job(client: Client, text: str) -> str:
    """The job a user names: its whole id, or the start of one (the 8 characters the server's
    log shows) that only one of the jobs they can see begins with."""
    text = text.strip().lower()
    if len(text) == 32:
        return text
    if len(text) < 4 or not all(c in "0123456789abcdef" for c in text):
        raise InvalidRequestError(f"no job has the id {printable(text, 40)!r}",
                                  hint="give the id `submit` printed, or its first 8 or more "
                                       "characters (`animate4d status` lists your jobs)")
    matches = [j.id for j in client.list() if j.id.startswith(text)]
    if len(matches) != 1:
        raise InvalidRequestError(
            f"no job of yours begins with {text}" if not matches else
            f"{len(matches)} jobs begin with {text}",
            hint="`animate4d status` lists your jobs with their whole ids")
    return matches[0]


class _Follow:
    """Prints a job's progress on stderr while `Client.wait` follows it."""

    def __init__(self, quiet: bool):
        self.quiet, self.tty = quiet, sys.stderr.isatty()

    def __call__(self, job_id: str, body: wire.Body) -> None:
        if self.quiet:
            return
        if isinstance(body, wire.Progress):
            text = f"  {printable(body.stage, 64):<10} {body.step}/{body.total}"
            sys.stderr.write(("\r" + text + " " * 10) if self.tty else text + "\n")
        elif isinstance(body, wire.JobState):
            sys.stderr.write(("\n" if self.tty else "")
                             + f"  job is {printable(body.job.state, 32)}\n")
        sys.stderr.flush()


def _final(info: wire.JobInfo) -> int:
    if info.state == wire.DONE:
        return 0
    if info.state in (wire.FAILED, wire.CANCELLED):
        why = (f": {printable(info.error_code, 64)}: {printable(info.error_message, 2000)}"
               if info.error_code else "")
        print(f"animate4d: job {printable(info.id)} {info.state}{why}", file=sys.stderr)
        return 3
    print(f"animate4d: job {printable(info.id)} is still {printable(info.state, 32)}",
          file=sys.stderr)
    return 0


def _write(client: Client, job: str, out: str, preview: bool) -> None:
    from ..jobs.outputs import write_outputs

    mesh = a4d.loads(client.fetch(job))
    files = write_outputs(mesh, out, preview=preview, warn=print_warning)
    for p in files.paths():
        print(p.resolve())


def cmd_submit(args) -> int:
    path = Path(args.image)
    data = image_bytes(path, args)
    options = job_options(args)
    with _client(args) as client:
        info = client.submit(data, options, image_name=path.name)
        print(f"submitted {printable(path.name)} as job {printable(info.id)} "
              f"({printable(info.state, 32)})", file=sys.stderr)
        code = 0
        if args.wait or args.out:
            info = client.wait(info.id, _Follow(args.quiet))
            code = _final(info)
            if info.state == wire.DONE and args.out:
                _write(client, info.id, args.out, not args.no_preview)
        print(printable(info.id))
        return code


def cmd_status(args) -> int:
    with _client(args) as client:
        if args.job:
            info = client.status(_job(client, args.job))
            print(printable(info.state, 32))
            where = f"{printable(info.stage, 64)} {info.step}/{info.total}" if info.stage else ""
            if info.state == wire.QUEUED and info.queue_position is not None:
                where = f"position {info.queue_position} in the queue"
            print(f"job {printable(info.id)}: {printable(info.preset, 32)}, "
                  f"'{printable(info.prompt[:60])}', attempts {info.attempts}"
                  + (f", {where}" if where else ""))
            if info.error_code:
                print(f"error: {printable(info.error_code, 64)}: "
                      f"{printable(info.error_message, 2000)}")
            return 0
        jobs = client.list()
        for info in jobs:
            print(f"{printable(info.id)}  {printable(info.state, 32):<9}  "
                  f"{printable(info.preset, 32):<7}  {printable(info.prompt[:50])}")
        if not jobs:
            print("no jobs", file=sys.stderr)
        return 0


def cmd_attach(args) -> int:
    with _client(args) as client:
        info = client.wait(_job(client, args.job), _Follow(args.quiet))
        print(printable(info.state, 32))
        return _final(info)


def cmd_cancel(args) -> int:
    with _client(args) as client:
        job = _job(client, args.job)
        info = client.cancel(job)
        if info.state == wire.RUNNING and args.wait:
            info = client.wait(job, _Follow(True), timeout_s=30)
        print(printable(info.state, 32))
        return 0


def cmd_fetch(args) -> int:
    with _client(args) as client:
        _write(client, _job(client, args.job), args.out, args.preview)
        return 0


def cmd_delete(args) -> int:
    with _client(args) as client:
        job = _job(client, args.job)
        client.delete(job)
        print(f"deleted {job}", file=sys.stderr)
        return 0


def _connection(p) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--server", default=DEFAULT_SERVER, type=args_types.address,
                   help="address, HOST:PORT or tcp://HOST:PORT (default: %(default)s)")
    g.add_argument("--server-key", metavar="FILE", help="the server's public key (CURVE)")
    g.add_argument("--key", metavar="FILE", help="your key pair, the .key_secret file (CURVE)")
    g.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for an answer (default: %(default)s)")


def add_parsers(sub) -> None:
    s = sub.add_parser("submit", help="send an image to a server; prints the job id last",
                       description="Submit a job. The job id is printed alone on the last line "
                                   "of stdout. With --wait or --out, follow it to the end.")
    s.add_argument("image", metavar="IMAGE",
                   help="the picture to animate (PNG, JPEG, WebP, TIFF or BMP)")
    s.add_argument("--wait", action="store_true", help="follow the job until it ends")
    s.add_argument("--out", metavar="DIR", help="wait, then write the result files to DIR")
    add_job_options(s, prompt_required=True, presets=list(PRESETS))
    _connection(s)
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="a job's state (first line: the state word), or all jobs",
                        description="With JOB: the state word (queued, running, done, failed, "
                                    "cancelled) on the first line, then details. Without: a "
                                    "line per job.")
    st.add_argument("job", metavar="JOB", nargs="?",
                    help="the job id, or its first 8 or more characters")
    _connection(st)
    st.set_defaults(func=cmd_status)

    a = sub.add_parser("attach", help="follow a job's progress until it ends",
                       description="Shows the job's state and then its live progress; the final "
                                   "state is printed on stdout. Exit 3 if it failed or was "
                                   "cancelled.")
    a.add_argument("job", metavar="JOB", help="the job id, or its first 8 or more characters")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _connection(a)
    a.set_defaults(func=cmd_attach)

    c = sub.add_parser("cancel", help="cancel a job", description="Cancel a queued or running job.")
    c.add_argument("job", metavar="JOB", help="the job id, or its first 8 or more characters")
    c.add_argument("--wait", action="store_true", help="wait until the worker has stopped")
    _connection(c)
    c.set_defaults(func=cmd_cancel)

    f = sub.add_parser("fetch", help="download a finished job's result",
                       description="Write OUT/result.a4d and OUT/result.glb (and preview.gif with "
                                   "--preview) and print their paths.")
    f.add_argument("job", metavar="JOB", help="the job id, or its first 8 or more characters")
    f.add_argument("--out", metavar="DIR", required=True,
                   help="folder for the files (made if missing; earlier results there are "
                        "replaced)")
    f.add_argument("--preview", action="store_true", help="also render preview.gif")
    _connection(f)
    f.set_defaults(func=cmd_fetch)

    d = sub.add_parser("delete", help="delete a finished or queued job and its files",
                       description="Delete a job and everything the server keeps of it (its "
                                   "image, checkpoints and result). A running job must be "
                                   "cancelled first (`animate4d cancel JOB --wait`).")
    d.add_argument("job", metavar="JOB", help="the job id, or its first 8 or more characters")
    _connection(d)
    d.set_defaults(func=cmd_delete)
