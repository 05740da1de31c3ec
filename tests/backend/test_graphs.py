"""CUDA-graph replay of the priors' no-grad calls: the same results as the eager module.

The CPU tests check the wrapper is transparent where it must not capture (CPU, gradients);
the CUDA tests (skipped without a GPU) check replays equal eager calls, signatures get their
own graphs, and moving the weights drops stale graphs.
"""

import pytest
import torch

from animate4d.backend.priors import architectures, graphs
from animate4d.backend.priors.architectures import TINY_TEXT_WIDTH

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _unet(device, dtype=torch.float32):
    torch.manual_seed(0)
    return architectures.build("unet", tiny=True).to(device, dtype).eval().requires_grad_(False)


def _inputs(device, batch=2, size=8, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    emb = torch.randn(batch, 7, TINY_TEXT_WIDTH, generator=g).to(device, dtype)
    return x, t, emb


def test_on_the_cpu_the_wrapper_is_the_module():
    unet = _unet("cpu")
    wrapped = graphs.CudaGraphed(unet)
    x, t, emb = _inputs("cpu")
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=emb).sample
        b = wrapped(x, t, encoder_hidden_states=emb).sample
    assert torch.equal(a, b)
    assert wrapped.replays == 0 and not wrapped._graphs
    assert wrapped.config.in_channels == unet.config.in_channels  # attributes pass through
    assert wrapped.dtype == unet.dtype


def test_load_wraps_only_on_cuda(tmp_path):
    from animate4d.backend.priors import loading

    cpu = loading.load("zero123", _tiny_models(tmp_path), "cpu")
    assert not isinstance(cpu.unet, graphs.CudaGraphed)
    forced = loading.load("zero123", _tiny_models(tmp_path), "cpu", cuda_graphs=True)
    assert isinstance(forced.unet, graphs.CudaGraphed)
    assert not isinstance(forced.vae, graphs.CudaGraphed)  # runs with gradients


def _tiny_models(tmp_path):
    from animate4d.backend.priors import tiny

    folder = tmp_path / "models"
    if not folder.exists():
        tiny.make_tiny(folder, roles=("zero123",))
    return folder


def test_unwrapping_makes_the_parts_eager_and_releases_the_wrappers():
    inner = torch.nn.Linear(2, 2)
    vae = torch.nn.Linear(2, 2)
    parts = {"unet": graphs.CudaGraphed(inner), "vae": vae}
    wrapper = parts["unet"]
    wrapper._graphs["stale"] = object()  # as a capture on a GPU leaves it
    assert graphs.unwrap_parts(parts) is True
    assert parts["unet"] is inner and parts["vae"] is vae
    assert not wrapper._graphs and wrapper.max_graphs == 0  # whoever still holds it
    assert graphs.unwrap_parts(parts) is False


@cuda
def test_unwrapping_gives_the_graphs_memory_back():
    unet = _unet("cuda", torch.float16)
    parts = {"unet": graphs.CudaGraphed(unet)}
    held = parts["unet"]  # as an earlier stage's guidance still holds it
    x, t, emb = _inputs("cuda", batch=8, size=32, dtype=torch.float16)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    with torch.no_grad():
        held(x, t, encoder_hidden_states=emb)
    assert len(held._graphs) == 1
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what stays is the graph's own pool
    graphed = torch.cuda.memory_reserved()
    assert graphed > before
    graphs.unwrap_parts(parts)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() < graphed
    with torch.no_grad():  # the old wrapper captures no more
        held(x, t, encoder_hidden_states=emb)
    assert not held._graphs


@cuda
def test_replays_equal_eager_calls_per_signature():
    unet = _unet("cuda", torch.float16)
    wrapped = graphs.CudaGraphed(unet)
    with torch.no_grad():
        for batch, seed in ((2, 1), (2, 2), (4, 3), (2, 4)):
            x, t, emb = _inputs("cuda", batch=batch, dtype=torch.float16, seed=seed)
            want = unet(x, t, encoder_hidden_states=emb).sample
            got = wrapped(x, t, encoder_hidden_states=emb).sample
            torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    assert len(wrapped._graphs) == 2  # batch 2 and batch 4
    assert wrapped.replays == 4
    # The returned tensor is the caller's: a later replay does not overwrite it.
    with torch.no_grad():
        x, t, emb = _inputs("cuda", dtype=torch.float16, seed=5)
        first = wrapped(x, t, encoder_hidden_states=emb).sample
        kept = first.clone()
        wrapped(*_inputs("cuda", dtype=torch.float16, seed=6)[:2],
                encoder_hidden_states=_inputs("cuda", dtype=torch.float16, seed=6)[2])
    assert torch.equal(first, kept)


@cuda
def test_gradient_calls_run_eagerly_and_moving_drops_graphs():
    unet = _unet("cuda")
    wrapped = graphs.CudaGraphed(unet)
    x, t, emb = _inputs("cuda")
    emb.requires_grad_(True)
    wrapped(x, t, encoder_hidden_states=emb).sample.sum().backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    assert wrapped.replays == 0 and not wrapped._graphs
    with torch.no_grad():
        wrapped(x, t, encoder_hidden_states=emb.detach())
    assert len(wrapped._graphs) == 1
    wrapped.to("cpu")
    assert not wrapped._graphs


class _Syncs(torch.nn.Module):
    """A forward that reads a value back to the host: cannot be captured."""

    def forward(self, x):
        return x * float(x.abs().max())


@cuda
def test_a_module_that_cannot_be_captured_runs_eagerly_with_a_warning():
    wrapped = graphs.CudaGraphed(_Syncs())
    x = torch.rand(8, device="cuda") + 1
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="capture"):
        got = wrapped(x)
    torch.testing.assert_close(got, x * float(x.max()))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x * 2), x * 2 * float(x.max() * 2))
    assert wrapped.replays == 0 and not wrapped._graphs
    # The failed capture must not leave the GPU's random generator unusable (it did: the
    # next torch.rand on CUDA raised), nor stop another module from being captured.
    torch.manual_seed(3)
    first = torch.rand(4, device="cuda")
    torch.manual_seed(3)
    torch.testing.assert_close(torch.rand(4, device="cuda"), first)
    other = graphs.CudaGraphed(torch.nn.Linear(8, 8).cuda())
    with torch.no_grad():
        for _ in range(2):
            other(x)
    assert other.replays == 2
