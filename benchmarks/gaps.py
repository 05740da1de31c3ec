"""Where the GPU waits on the host: its idle gaps in a profiler trace, summed by the Python
call that launched the kernel after each gap.

A step whose kernels take far less than its wall time is bound by the host (Python, launch
overhead, syncs). Kernel-time tables cannot say which code to blame; this can: it reads the
Chrome trace of `torch.profiler.profile(with_stack=True)`, walks the device's kernels in
time order, and charges every gap before a kernel to the project frames (this package's
files) on the stack of the host call that launched it. Kernels launched by the autograd
engine's thread have no project frame: they are charged to the backward node running
("(backward) ConvolutionBackward0"). The kernels' own time is summed by the same callers:
which code owns the device time.
"""

from __future__ import annotations

import collections

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")  # Triton launches through the driver API
MIN_GAP_US = 5.0  # shorter gaps are the launch pipeline itself
BACKWARD_OP = "autograd::engine::evaluate_function: "
OUTSIDE = "(outside the package)"


def _own(frame: str) -> bool:
    """A frame of this package (installed, or run from a checkout's `backend/`)."""
    return "animate4d" in frame or "/backend/" in frame


def _short(frame: str) -> str:
    """'.../backend/field/render.py(285): render_rays' -> 'render.py(285): render_rays'."""
    return frame.rsplit("/", 1)[-1]


class _Stacks:
    """The Python frames open on a thread at a time, from the trace's python_function
    events, and the autograd node running there (its cpu_op events)."""

    def __init__(self, events: list[dict]):
        self.frames, self.nodes = collections.defaultdict(list), collections.defaultdict(list)
        for e in events:
            if e.get("ph") != "X":
                continue
            if e.get("cat") == "python_function":
                self.frames[e.get("tid")].append(e)
            elif e.get("cat") == "cpu_op" and e.get("name", "").startswith(BACKWARD_OP):
                self.nodes[e.get("tid")].append(e)

    @staticmethod
    def _sweep(spans: list[dict], queries: list[tuple[float, int]]) -> dict[int, list[str]]:
        """For each (ts, key) query, the names of the spans open at ts, outermost first:
        one pass over spans and queries in time order (spans on a thread nest)."""
        spans = sorted(spans, key=lambda e: (e["ts"], -e.get("dur", 0)))
        out, stack, j = {}, [], 0
        for ts, key in sorted(queries):
            while j < len(spans) and spans[j]["ts"] <= ts:
                while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < spans[j]["ts"]:
                    stack.pop()
                stack.append(spans[j])
                j += 1
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < ts:
                stack.pop()
            out[key] = [e["name"] for e in stack if e["ts"] + e.get("dur", 0) >= ts]
        return out

    def callers(self, launches: list[dict | None]) -> list[tuple[str, str]]:
        """Per launch (None: not in the trace): the last three project frames of the
        launching call and the innermost one; the backward node's name where the launch has
        no project frame."""
        by_tid = collections.defaultdict(list)
        for i, launch in enumerate(launches):
            if launch is not None:
                by_tid[launch.get("tid")].append((launch["ts"], i))
        out = [(OUTSIDE, OUTSIDE)] * len(launches)
        for tid, queries in by_tid.items():
            frames = self._sweep(self.frames.get(tid, []), queries)
            nodes = self._sweep(self.nodes.get(tid, []), queries)
            for _, i in queries:
                own = [f for f in frames[i] if _own(f)]
                if own:
                    out[i] = (" > ".join(_short(f) for f in own[-3:]), _short(own[-1]))
                elif nodes[i]:
                    label = f"(backward) {nodes[i][-1][len(BACKWARD_OP):]}"
                    out[i] = (label, label)
        return out


def idle_gaps(events: list[dict], steps: int = 1, top: int = 25) -> dict:
    """Per step: the span from the first kernel's start to the last one's end, the time
    kernels ran, the idle gaps (summed where longer than MIN_GAP_US), the gaps by the last
    three project frames of the launching call (`by_caller`) and by its innermost project
    frame (`by_frame`), the kernels' own time by the same callers (`busy_by_caller`), and
    the host's synchronising calls and copies. `events`: a Chrome trace's traceEvents
    covering `steps` steps."""
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
                "by_frame": [], "busy_by_caller": [], "host_calls": calls}
    callers = _Stacks(events).callers(
        [launches.get(e.get("args", {}).get("correlation")) for e in device])
    by_caller, by_frame, busy_by = (collections.Counter() for _ in range(3))
    busy = sum(e.get("dur", 0) for e in device)
    end = device[0]["ts"]
    total = 0.0
    for i, (e, (caller, frame)) in enumerate(zip(device, callers, strict=True)):
        busy_by[caller] += e.get("dur", 0)
        gap = e["ts"] - end
        if i and gap > MIN_GAP_US:
            total += gap
            by_caller[caller] += gap
            by_frame[frame] += gap
        end = max(end, e["ts"] + e.get("dur", 0))
    span = end - device[0]["ts"]

    def rows(counter):
        return [{"call": k, "ms_per_step": round(v / per, 3)} for k, v in
                counter.most_common(top)]

    return {"span_ms": round(span / per, 2), "busy_ms": round(busy / per, 2),
            "gaps_ms": round(total / per, 2), "by_caller": rows(by_caller),
            "by_frame": rows(by_frame), "busy_by_caller": rows(busy_by), "host_calls": calls}
