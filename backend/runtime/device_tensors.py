"""Small host data (camera poses, times, colours, schedules) copied to the GPU without a host
sync.

Why: `torch.tensor(x, device="cuda")` and `.to("cuda")` from ordinary (pageable) host memory
wait for everything already queued on the stream before they return. In a training step that
makes the host sit idle while the GPU runs a prior's UNet, instead of launching the next work
beside it. A non-blocking copy stages the bytes at once and lets the copy run in stream order.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(data, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`data` (a number, nested sequences, an array or a tensor) as a tensor on `device`;
    no host sync on CUDA. A tensor already on a GPU is moved there directly (never through
    the host); one already on `device` in `dtype` is returned as is."""
    if torch.is_tensor(data) and data.device.type != "cpu":
        return data.to(device, dtype)
    host = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data,
                           dtype=dtype, device="cpu")
    return host.to(device, non_blocking=True)
