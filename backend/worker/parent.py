"""A worker that must not outlive the process that started it (`serve --local`'s worker).

On Linux the kernel kills the worker when its parent exits (PR_SET_PDEATHSIG), however the
parent went (kill -9 included) and whatever the worker is doing (a job thread holding the GIL
included). Elsewhere, and as a second line on Linux, the worker's loop sees its parent pid
change (`Worker(parent_pid=...)`) and stops. With the parent gone there is no server to hand a
job back to: a restarted server requeues it from its checkpoints.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> int:
    """Arrange to be killed when the current parent exits; returns the parent's pid for the
    worker loop to watch. Exits at once if the parent has already gone."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            print(f"worker: prctl(PR_SET_PDEATHSIG) failed ({os.strerror(err)}); watching the "
                  "parent pid instead", file=sys.stderr, flush=True)
    if os.getppid() != parent:  # it went before the kernel was asked
        print("worker: the process that started this worker has exited", file=sys.stderr,
              flush=True)
        sys.exit(0)
    return parent
