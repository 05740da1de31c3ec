"""A worker whose jobs first hold the GIL for SECONDS, in one C call that keeps it (as scipy's
spsolve does), then run the preview pipeline:

    python -m tests.backend.gil_worker ADDRESS SECONDS

It prints how long the call held the GIL and how often another Python thread ran meanwhile
(0 or 1: the GIL really was held), for the test to check that the condition happened.
"""

import ctypes
import sys
import threading
import time

from animate4d.backend.jobs.presets import available
from animate4d.backend.worker.worker import Worker


def main() -> None:
    address, seconds = sys.argv[1], int(sys.argv[2])
    preview = available()["preview"]
    libc = ctypes.PyDLL(None)  # a PyDLL call does not release the GIL (a CDLL call would)

    def holding(image, options, progress, checkpoints):
        progress("hold", 0, 1)
        ticks = [0]

        def tick():
            while True:
                ticks[0] += 1
                time.sleep(0.001)

        threading.Thread(target=tick, daemon=True).start()
        time.sleep(0.05)
        before, t0 = ticks[0], time.monotonic()
        libc.sleep(seconds)
        ran, held = ticks[0] - before, time.monotonic() - t0
        print(f"held the GIL for {held:.1f} s; another thread ran {ran} times", flush=True)
        return preview(image, options, progress, checkpoints)

    Worker(address, name="gil", pipelines={"preview": holding}).run()


if __name__ == "__main__":
    main()
