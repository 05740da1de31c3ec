"""`stages --phases`: each part of a stage's step timed on its own, the host's time to
return from it beside the time until the GPU has finished it.

Why: a step's wall time says nothing of which part the host bounds. With a sync before and
after each part, a part whose host time equals its total kept the GPU waiting on Python and
launches (the renders, the whole static step); one whose total is far above its host time is
bound by the GPU (the priors). The syncs cost time of their own, so these are not the step's
figures: `stages` times the steps without them.
"""

from __future__ import annotations

import collections
import contextlib
import statistics
import time


def _parts() -> tuple:
    """(owner, attribute, phase): the callables wrapped while the phases are timed."""
    import torch

    from animate4d.backend.field.render import Renderer
    from animate4d.backend.priors import guidance as g

    return ((Renderer, "render", "render"),  # every SDS render, with regularisers or not
            (g, "encode_images", "vae_encode"),  # also inside each prior's phase below
            (g.StableDiffusionGuidance, "__call__", "sd"),
            (g.Zero123Guidance, "__call__", "zero123"),
            (g.VideoGuidance, "__call__", "video"),
            (g.ControlNetTileGuidance, "__call__", "tile"),
            (torch.autograd, "backward", "backward"),  # what Tensor.backward calls
            (torch.optim.Adam, "step", "optimiser_step"),  # the stages' optimiser
            (torch.optim.AdamW, "step", "optimiser_step"))  # textual inversion's


class _Recorder:
    def __init__(self, device):
        self.device = device
        self.rows: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, fn, name):
        def timed(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            t1 = time.perf_counter()
            self._sync()
            self.rows[name].append((t1 - t0, time.perf_counter() - t0))
            return out
        return timed


@contextlib.contextmanager
def _wrapped(recorder: _Recorder):
    """The parts wrapped for the duration, and put back as they were after."""
    undo = []
    try:
        for owner, attr, name in _parts():
            if attr not in vars(owner):
                continue  # inherited (AdamW's step is Adam's in some releases)
            original = vars(owner)[attr]
            setattr(owner, attr, recorder.wrap(original, name))
            undo.append((owner, attr, original))
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def time_phases(stage: str, step, device, iters: int) -> dict:
    """Median host and total ms per call of each part, over `iters` steps of each kind
    (SDS and reference; textual inversion's one kind), with the calls per step."""
    out = {}
    kinds = ("step",) if stage == "textual_inversion" else ("sds", "reference")
    for kind in kinds:
        recorder = _Recorder(device)
        with _wrapped(recorder):
            for _ in range(iters):
                step(0.5) if kind != "reference" else step(0.5, True)
        out[kind] = {name: {"host_ms": round(statistics.median(h for h, _ in v) * 1e3, 1),
                            "total_ms": round(statistics.median(t for _, t in v) * 1e3, 1),
                            "calls_per_step": round(len(v) / iters, 2)}
                     for name, v in recorder.rows.items()}
    return out
