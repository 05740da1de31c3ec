"""The fields' small ReLU MLPs: plain `nn.Sequential` layers (Linear, ReLU, ..., Linear), run
by the fused Triton kernels (`mlp_triton`) where they can be, by PyTorch elsewhere.

The parameters and their names are the Sequential's either way ("0.weight", "2.bias", ...),
so checkpoints, optimisers and `net[-1]` do not care which path ran. ANIMATE4D_FUSED_MLP=0
keeps the PyTorch path everywhere (benchmarks compare the two).
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import switches
from . import mlp_triton


class MLP(nn.Sequential):
    """`layers` Linear layers with ReLUs between them: inp -> hidden ... -> out."""

    def __init__(self, inp: int, hidden: int, out: int, layers: int = 2):
        mods: list[nn.Module] = []
        d = inp
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, out))
        super().__init__(*mods)
        # The same module objects, kept apart once (a plain tuple: not registered twice).
        self._linears = tuple(m for m in mods if isinstance(m, nn.Linear))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """MLP(x * scale) for x (n, inp), or (n, L, F) per-level features with L F = inp (a
        hash grid's output, read where it lies on the fused path). `scale` (inp,) weighs the
        inputs (a motion field's level window); the fused path folds it into the first
        layer's weights instead of scaling x."""
        if self._fused(x):
            linears = self._linears
            w1 = linears[0].weight if scale is None else linears[0].weight * scale[None, :]
            mid = linears[1:-1]
            return _run_fused(x, w1, linears[0].bias,
                              mid[0].weight if mid else None, mid[0].bias if mid else None,
                              linears[-1].weight, linears[-1].bias)
        x = x.flatten(1)
        if scale is not None:
            x = x * scale
        for m in self:
            x = m(x)
        return x

    def _fused(self, x: torch.Tensor) -> bool:
        if not mlp_triton.available(x) or not switches.active().fused_mlp:
            return False
        linears = self._linears
        return (len(linears) in (2, 3) and x.dtype == torch.float32
                and all(m.weight.dtype == torch.float32 for m in linears)
                and all(max(m.weight.shape) <= 128 for m in linears))  # registers


@torch.compiler.disable
def _run_fused(x, *weights):
    """Outside torch.compile's graphs: compiled fields call the kernels as they are."""
    return mlp_triton.FusedMLP.apply(x, *weights)
