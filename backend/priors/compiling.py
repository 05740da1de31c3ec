"""torch.compile for the priors' hot parts, chosen per stage where measured to help.

Why: the VAE encoders run with gradients on every SDS step (the render's gradient comes back
through them), and eagerly their group norms, SiLUs and cuDNN's NCHW <-> NHWC conversions cost
about as much as their convolutions; Inductor fuses the norms with their activations, forward
and backward, so every stage that runs them compiles them. Refinement's encoder at 1024 px
gains only because its attention runs in checkpointed chunks (`attention.py`): with PyTorch's
one-kernel attention over 16,384 tokens compiling it was slower and larger, so re-measure
this choice when the attention changes. Textual inversion trains through the SD UNet (batch
16, with gradients) and compiles it; refinement compiles ControlNet and UNet. The dynamic
stage's UNets, already under CUDA graphs, gain too little for the memory compiling them costs,
and stay eager. Each choice, taken or not, is measured in docs/BENCHMARKS.md. Compiling costs
time once per process and call shape (Inductor caches kernels on disk).

The runtime switch `compile` (ANIMATE4D_COMPILE=vae,unet, or "" for none) overrides the
per-stage choice everywhere. Only CUDA compiles: on the CPU the parts stay eager.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..runtime import switches
from ..runtime.switches import COMPILABLE
from .graphs import CudaGraphed
from .wrapping import Wrapper

STAGE_DEFAULTS = {"textual_inversion": "unet", "static": "vae", "dynamic": "vae",
                  "refine": "controlnet,unet,vae"}


def for_stage(stage: str) -> tuple[str, ...]:
    """The parts a stage compiles: the `compile` switch if set, else the measured default."""
    chosen = switches.active().compile
    return chosen if chosen is not None else switches.parse_parts(STAGE_DEFAULTS.get(stage, ""))


class Compiled(Wrapper):
    """`Compiled(m)(...)` runs torch.compile(m); attributes (config, dtype) come from m. If
    compiling or running the compiled code fails (a worker without a working Inductor
    toolchain, say), it warns once and calls m eagerly from then on: a job never dies of
    an optimisation. Out-of-memory errors are not swallowed; a failure inside a compiled
    backward pass surfaces where backward() is called, and is not caught here."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        # Not a registered submodule: it would list the same parameters a second time.
        object.__setattr__(self, "_fn", torch.compile(module, dynamic=False,
                                                      mode=switches.active().compile_mode))
        self.failed = False

    def forward(self, *args, **kwargs):
        if self.failed:
            return self.inner(*args, **kwargs)
        try:
            return self._fn(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, once
            warnings.warn(f"torch.compile of {type(self.inner).__name__} failed "
                          f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            self.failed = True
            return self.inner(*args, **kwargs)


def eager(module: nn.Module) -> nn.Module:
    return module.inner if isinstance(module, Compiled) else module


def _compiled(module: nn.Module, want: bool) -> nn.Module:
    if isinstance(module, Compiled) == want:
        return module
    return Compiled(module) if want else eager(module)


def _set(module: nn.Module, want: bool) -> nn.Module:
    """`module` compiled (want) or eager; inside a CUDA-graph wrapper, what it captures."""
    if isinstance(module, CudaGraphed):
        module.set_inner(_compiled(module.inner, want))
        return module
    return _compiled(module, want)


def _present(parts: dict) -> dict[str, nn.Module]:
    """The compilable parts a prior has, by name ("vae": its encoder, which is what compiles)."""
    return {name: parts["vae"].encoder if name == "vae" else parts[name]
            for name in COMPILABLE if isinstance(parts.get(name), nn.Module)}


def apply(parts: dict, names: tuple[str, ...], device) -> None:
    """Compile the named parts of one prior and make the others eager, in place."""
    on_cuda = torch.device(device).type == "cuda"
    for name, module in _present(parts).items():
        module = _set(module, on_cuda and name in names)
        if name == "vae":
            parts["vae"].encoder = module
        else:
            parts[name] = module


def holds_compiled(parts: dict) -> bool:
    """Whether any of a prior's parts runs compiled (directly, as the VAE's encoder, or inside
    a CUDA-graph wrapper)."""
    return any(isinstance(m.inner if isinstance(m, CudaGraphed) else m, Compiled)
               for m in _present(parts).values())


def forget_compiled() -> None:
    """Drop every compiled graph. Dynamo keeps its compiled code on the module's code object,
    with references that keep a deleted module's GPU memory alive (pytorch/pytorch#104095,
    #122969): a dropped prior whose parts were compiled is freed only after this. Parts still
    loaded and compiled recompile on their next call (Inductor's disk cache makes it quick)."""
    torch._dynamo.reset()

