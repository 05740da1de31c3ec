"""Host data to the device without host syncs (`backend.device_tensors`); the GPU test checks
that a render's setup and an SDS call never wait for the GPU on such a copy."""

import numpy as np
import pytest
import torch

from animate4d.backend.runtime.device_tensors import to_device


def test_to_device_converts_numbers_sequences_arrays_and_tensors():
    assert to_device(0.5, "cpu").dtype == torch.float32 and float(to_device(0.5, "cpu")) == 0.5
    got = to_device([(1, 2), (3, 4)], "cpu", torch.long)
    assert got.dtype == torch.long and got.tolist() == [[1, 2], [3, 4]]
    assert to_device(np.eye(3), "cpu").dtype == torch.float32
    x = torch.arange(3.0)
    assert to_device(x, "cpu").tolist() == [0.0, 1.0, 2.0]
    assert to_device(x, "cpu", torch.float64).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_setup_and_sds_do_not_sync_the_host():
    from animate4d.backend.field.render import CameraBatch
    from animate4d.backend.pipeline.cameras import orbit_camera
    from animate4d.backend.priors.sds import sds

    cams = [orbit_camera(70, a, 32) for a in (0, 90)]
    latents = torch.randn(2, 4, 8, 8, device="cuda")
    alphas = torch.linspace(0.99, 0.01, 1000)  # on the host, as a scheduler keeps them
    t = torch.randint(20, 980, (2,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = CameraBatch(cams, "cuda")
        to_device([0.0, 0.5], "cuda")
        out = sds(latents, lambda x, tt: (x, x), scale=7.5, alphas_cumprod=alphas, t=t)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.location.is_cuda and out.loss.is_cuda
    on_gpu = torch.ones(2, device="cuda")
    assert to_device(on_gpu, "cuda") is on_gpu  # "cuda" and cuda:0: no trip through the host
    assert torch.allclose(batch.location.cpu(), torch.tensor(np.stack(
        [c.location for c in cams]), dtype=torch.float32))
