"""The reference step as one CUDA graph.

A reference step (Animate124's known-view step, a quarter of every field stage's steps)
renders the reference view of the canonical field and fits it to the input. That is a few
milliseconds of GPU work spread over a few hundred small kernels and autograd nodes, each
launched by the host while the GPU waits, so eager it takes several times its GPU time
(docs/BENCHMARKS.md). Captured once per stage and replayed, the whole step (render, losses,
backward, gradient clip, Adam) is one launch. A graph needs fixed shapes and no host syncs,
so this step renders with `Renderer.render_rays_dense` (every sample in the box; no
occupancy grid, no pruning, which only ever left out samples of little or no light) and the
optimiser must be `capturable` (`optimisation.stage_optimiser` makes it so on CUDA). The
sample jitter is drawn inside the graph, fresh at every replay.

Off the GPU (or `graph=False`) the same step runs eagerly, and so does it after a capture
that fails (with a warning), as the priors' graphs do (`priors.graphs`).
"""

from __future__ import annotations

import gc
import warnings

import torch

from ..field.render import camera_rays
from ..preprocess.framing import canonical_camera
from ..priors.graphs import capture, on_side_stream
from ..runtime.device_tensors import to_device
from .optimisation import give_gradients, optimise
from .stages import Reference, Scene, reference_terms


class ReferenceGraph:
    """`step()`: one reference step of `opt` (returns its losses, which the next step
    overwrites). The first WARMUP steps run eagerly, on a side stream as capture wants; the
    next one captures the graph, and it and every later one replay it."""

    WARMUP = 3

    def __init__(self, scene: Scene, ref: Reference, preset, opt: torch.optim.Optimizer,
                 clip: float | None, *, jitter: bool = True, graph: bool = True):
        self.scene, self.ref, self.preset, self.opt, self.clip = scene, ref, preset, opt, clip
        self.jitter = jitter
        self.use_graph = graph and scene.device.type == "cuda"
        cam = canonical_camera(ref.rgb.shape[-1])
        self.size = cam.resolution[::-1]  # (H, W)
        self.o, self.d = camera_rays(cam, scene.device)
        self.background = to_device((1.0, 1.0, 1.0), scene.device)
        if self.use_graph:
            # A graph zeroes and steps the gradients that exist when it is captured; an
            # eager step (`optimise`) every parameter that has one. Giving each parameter its
            # gradient now makes the two the same set from the first step.
            give_gradients(opt)
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._losses: dict | None = None

    def _step(self) -> dict:
        out = self.scene.renderer.render_rays_dense(self.o, self.d, background=self.background,
                                                    jitter=self.jitter)
        h, w = self.size
        rgb = out["rgb"].view(h, w, 3).permute(2, 0, 1).clamp(0, 1)  # as `Scene.render`
        losses = reference_terms(rgb, out["alpha"].view(h, w), out["depth"].view(h, w),
                                 self.ref, self.preset)
        optimise(self.opt, losses, self.clip)
        return losses

    def step(self) -> dict:
        if not self.use_graph:
            return self._step()
        self.calls += 1
        if self._graph is None and self.calls <= self.WARMUP:
            return on_side_stream(self._step, self.scene.device)
        if self._graph is None:
            # No autograd graph of an earlier step may be alive (a kept loss): capture would
            # reuse its gradient accumulators, made on another stream, and fail.
            gc.collect()
            try:  # recorded, not run: the replay below runs it
                self._graph, self._losses = capture(self._step)
            except RuntimeError as e:  # the job goes on, eagerly
                warnings.warn(f"CUDA graph capture of the reference step failed "
                              f"({str(e).splitlines()[0][:200]}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
                self.use_graph = False
                return self._step()
        self._graph.replay()
        return self._losses

    @property
    def captured(self) -> bool:
        return self._graph is not None
