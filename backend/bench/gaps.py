"""Where the GPU waits on the host: its idle gaps in a profiler trace, summed by the Python
call that launched the kernel after each gap.

A step whose kernels take far less than its wall time is bound by the host (Python, launch
overhead, syncs). Kernel-time tables cannot say which code to blame; this can: it reads the
Chrome trace of `torch.profiler.profile(with_stack=True)`, walks the device's kernels in
time order, and charges every gap before a kernel to the project frames (this package's
files) on the stack of the host call that launched it.
"""

from __future__ import annotations

import bisect
import collections

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")  # Triton launches through the driver API
MIN_GAP_US = 5.0  # shorter gaps are the launch pipeline itself


def _own(frame: str) -> bool:
    """A frame of this package (installed, or run from a checkout's `backend/`)."""
    return "animate4d" in frame or "/backend/" in frame


def _short(frame: str) -> str:
    """'.../backend/field/render.py(285): render_rays' -> 'render.py(285): render_rays'."""
    return frame.rsplit("/", 1)[-1]


class _Stacks:
    """The Python frames open on a thread at a time, from the trace's python_function
    events."""

    def __init__(self, events: list[dict]):
        by_tid = collections.defaultdict(list)
        for e in events:
            if e.get("ph") == "X" and e.get("cat") == "python_function":
                by_tid[e.get("tid")].append(e)
        self.frames = {t: sorted(v, key=lambda e: e["ts"]) for t, v in by_tid.items()}
        self.starts = {t: [e["ts"] for e in v] for t, v in self.frames.items()}

    def at(self, tid, ts: float, window: int = 5000) -> list[str]:
        """Outermost first. Scans back `window` frames: the innermost, which name the
        caller, start shortly before the launch."""
        frames = self.frames.get(tid, [])
        i = bisect.bisect_right(self.starts.get(tid, []), ts)
        open_ = [e for e in frames[max(0, i - window):i] if e["ts"] + e.get("dur", 0) >= ts]
        return [e["name"] for e in open_]


def idle_gaps(events: list[dict], steps: int = 1, top: int = 25) -> dict:
    """Per step: the span from the first kernel's start to the last one's end, the time
    kernels ran, the idle gaps (summed where longer than MIN_GAP_US), the gaps by the last
    three project frames of the launching call (`by_caller`) and by its innermost project
    frame (`by_frame`), and the host's synchronising calls and copies. `events`: a Chrome
    trace's traceEvents covering `steps` steps."""
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS),
                    key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS
                and "correlation" in e.get("args", {})}
    host_calls = collections.Counter(
        e["name"] for e in events
        if e.get("cat") in LAUNCH_CATS and ("Synchronize" in e.get("name", "")
                                            or "Memcpy" in e.get("name", "")))
    per = max(steps, 1) * 1e3  # microseconds -> ms per step
    calls = {k: round(v / max(steps, 1), 1) for k, v in host_calls.items()}
    if not device:
        return {"span_ms": 0.0, "busy_ms": 0.0, "gaps_ms": 0.0, "by_caller": [],
                "by_frame": [], "host_calls": calls}
    stacks = _Stacks(events)
    by_caller, by_frame = collections.Counter(), collections.Counter()
    busy = sum(e.get("dur", 0) for e in device)
    end = device[0]["ts"] + device[0].get("dur", 0)
    total = 0.0
    for e in device[1:]:
        gap = e["ts"] - end
        if gap > MIN_GAP_US:
            total += gap
            launch = launches.get(e.get("args", {}).get("correlation"))
            own = ([f for f in stacks.at(launch.get("tid"), launch["ts"]) if _own(f)]
                   if launch else [])
            by_caller[" > ".join(_short(f) for f in own[-3:]) or "(outside the package)"] += gap
            by_frame[_short(own[-1]) if own else "(outside the package)"] += gap
        end = max(end, e["ts"] + e.get("dur", 0))
    span = end - device[0]["ts"]

    def rows(counter):
        return [{"call": k, "ms_per_step": round(v / per, 3)} for k, v in
                counter.most_common(top)]

    return {"span_ms": round(span / per, 2), "busy_ms": round(busy / per, 2),
            "gaps_ms": round(total / per, 2), "by_caller": rows(by_caller),
            "by_frame": rows(by_frame), "host_calls": calls}
