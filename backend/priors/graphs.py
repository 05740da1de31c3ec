"""Replay a frozen prior's no-grad forward pass from CUDA graphs.

Why: SDS calls the UNets (and ControlNet) under no_grad with the same shapes every step, and at
the priors' sizes many of their ~1,000 kernels are small (Zero123 works on 32 x 32 latents), so
the eager forward spends much of its time launching kernels from Python. A captured graph
launches them all at once. One graph per call signature (tensor shapes and dtypes, the other
arguments' values), at most `max_graphs`; calls with gradients enabled (textual inversion), on
the CPU, or past the limit run eagerly, so wrapping never changes what a call computes.

Each graph keeps its own memory pool (the forward's intermediates stay reserved between
calls): it shows in `torch.cuda.max_memory_reserved`, not in `max_memory_allocated`. Where
the calls are large, graphs buy little time and cost that memory: refinement's ControlNet and
UNet at 1024 px are no faster graphed and reserve several GB more (docs/BENCHMARKS.md), so
`ControlNetTileGuidance` calls them through `eager()`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..runtime import switches
from .wrapping import Wrapper

# The parts worth graphing: run every step without gradients. (The VAE encoders run with
# gradients; the image encoder once per job.)
GRAPHED_PARTS = ("unet", "controlnet")


def enabled(device) -> bool:
    """On for CUDA unless the `cuda_graphs` switch is off (ANIMATE4D_CUDA_GRAPHS=0)."""
    return torch.device(device).type == "cuda" and switches.active().cuda_graphs


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: object


def _signature(leaves) -> tuple:
    return tuple((x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) else
                 (type(x), x) for x in leaves)


class CudaGraphed(Wrapper):
    """`CudaGraphed(unet)(...)` computes what `unet(...)` does; attributes (config, dtype)
    come from the wrapped module."""

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 2):
        super().__init__(module)
        self.max_graphs, self.warmup = max_graphs, warmup
        self._graphs: dict[tuple, _Graph] = {}
        self.replays = 0

    def set_inner(self, module: nn.Module) -> None:
        """Wrap another module computing the same thing (its compiled or eager form); the
        captured graphs replay the old one's kernels, so they go."""
        if module is not self.inner:
            self.inner = module
            self._graphs.clear()

    def release(self) -> None:
        """Drop the captured graphs (their memory pools go with them) and capture no more:
        for a wrapper a stage unwraps (`unwrap_parts`) that something may still hold."""
        self._graphs.clear()
        self.max_graphs = 0

    def _apply(self, fn, recurse=True):
        # .to() / .half() move the weights: captured graphs would read the old addresses.
        self._graphs.clear()
        return super()._apply(fn, recurse)

    def forward(self, *args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if (torch.is_grad_enabled() or not tensors
                or not all(x.is_cuda for x in tensors)):
            return self.inner(*args, **kwargs)
        try:
            key = (str(spec), _signature(leaves))
            hash(key)
        except TypeError:  # an argument that cannot be told apart by value
            return self.inner(*args, **kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.inner(*args, **kwargs)
            try:
                entry = self._capture(leaves, spec)
            except RuntimeError as e:  # e.g. a host sync inside the forward: stay eager
                warnings.warn(f"CUDA graph capture of {type(self.inner).__name__} failed "
                              f"({str(e).splitlines()[0][:200]}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
                self.max_graphs = 0
                return self.inner(*args, **kwargs)
            self._graphs[key] = entry
        for dst, src in zip(entry.inputs, tensors, strict=True):
            dst.copy_(src)
        entry.graph.replay()
        self.replays += 1
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, entry.output)

    def _capture(self, leaves, spec) -> _Graph:
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = tree_unflatten(static, spec)
        def warm_up():  # first calls outside the graph (lazy inits, autotune)
            for _ in range(self.warmup):
                self.inner(*args, **kwargs)

        on_side_stream(warm_up)
        graph, output = capture(lambda: self.inner(*args, **kwargs))
        return _Graph(graph, [x for x in static if isinstance(x, torch.Tensor)], output)


def on_side_stream(fn, device=None):
    """`fn()` on a fresh CUDA stream, in order with the current stream's work before and
    after: how the calls before a capture are made (`torch.cuda.graph`'s advice)."""
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = fn()
    main.wait_stream(side)
    return out


def capture(fn) -> tuple[torch.cuda.CUDAGraph, object]:
    """A CUDA graph of `fn()` (recorded, not run) and its output. A capture that fails
    raises its RuntimeError with the GPU's random generator as it was before: a failed
    capture leaves the default CUDA generator in capture mode, and every later random draw
    on the GPU would fail ("Offset increment outside graph capture")."""
    graph = torch.cuda.CUDAGraph()
    rng = torch.cuda.default_generators[torch.cuda.current_device()]
    before = rng.clone_state()
    try:
        with torch.cuda.graph(graph):
            output = fn()
    except RuntimeError:
        rng.graphsafe_set_state(before)
        raise
    return graph, output


def wrap_parts(parts: dict) -> None:
    """Wrap a prior's graphable parts in place."""
    for name in GRAPHED_PARTS:
        if name in parts and not isinstance(parts[name], CudaGraphed):
            parts[name] = CudaGraphed(parts[name])


def unwrap_parts(parts: dict) -> bool:
    """Make a prior's graphed parts eager in place, their graphs' memory pools released;
    whether any part was graphed."""
    unwrapped = False
    for name in GRAPHED_PARTS:
        if isinstance(parts.get(name), CudaGraphed):
            parts[name].release()
            parts[name] = parts[name].inner
            unwrapped = True
    return unwrapped


def eager(module: nn.Module) -> nn.Module:
    """The module itself, unwrapped: for callers whose calls are too large to gain."""
    return module.inner if isinstance(module, CudaGraphed) else module
