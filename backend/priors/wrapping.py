"""A module that stands in for another: calls go through `forward`, every other attribute
(config, dtype, ...) comes from the wrapped module, so diffusers code that reads them keeps
working whatever wraps a prior's part (graphs.CudaGraphed, compiling.Compiled)."""

from __future__ import annotations

from torch import nn


class Wrapper(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)
