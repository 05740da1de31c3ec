"""Per-stage torch.compile of prior parts: which parts, toggled in place, and (on a GPU) the
compiled VAE encoder computes what the eager one does, gradients included."""

import warnings

import pytest
import torch

from animate4d.backend.priors import architectures, compiling, graphs
from animate4d.backend.runtime import switches

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_stage_choice_switch_override_and_bad_names():
    with switches.use(switches.from_environ({})):
        assert compiling.for_stage("dynamic") == ("vae",)
        assert compiling.for_stage("textual_inversion") == ("unet",)
        assert compiling.for_stage("refine") == ("controlnet", "unet", "vae")
    with switches.use(switches.from_environ({"ANIMATE4D_COMPILE": "unet, vae"})):
        assert compiling.for_stage("refine") == ("unet", "vae")
    with switches.use(switches.from_environ({"ANIMATE4D_COMPILE": ""})):
        assert compiling.for_stage("dynamic") == ()
    with pytest.raises(ValueError, match="ANIMATE4D_COMPILE.*decoder.*vae, unet"):
        switches.from_environ({"ANIMATE4D_COMPILE": "vae,decoder"})


def test_apply_toggles_in_place_and_keeps_graph_wrappers():
    vae = architectures.build("vae", tiny=True).eval()
    unet = graphs.CudaGraphed(architectures.build("unet", tiny=True).eval())
    unet._graphs["stale"] = object()
    encoder, inner = vae.encoder, unet.inner
    parts = {"vae": vae, "unet": unet, "scheduler": object()}

    compiling.apply(parts, ("vae", "unet"), "cpu")  # the CPU never compiles
    assert parts["vae"].encoder is encoder and parts["unet"].inner is inner

    compiling.apply(parts, ("vae", "unet"), "cuda")  # wrapping only: compiles on first call
    assert compiling.eager(parts["vae"].encoder) is encoder
    assert parts["vae"].encoder is not encoder
    assert parts["unet"] is unet and compiling.eager(unet.inner) is inner
    assert not unet._graphs  # graphs of the eager module would replay its kernels
    compiled = parts["vae"].encoder
    compiling.apply(parts, ("vae", "unet"), "cuda")
    assert parts["vae"].encoder is compiled  # idempotent

    compiling.apply(parts, (), "cuda")
    assert parts["vae"].encoder is encoder and unet.inner is inner


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(module, **kw):
        def fn(*a, **k):
            raise RuntimeError("Inductor: no C compiler found")
        return fn

    monkeypatch.setattr(compiling.torch, "compile", broken)
    linear = torch.nn.Linear(3, 2)
    wrapped = compiling.Compiled(linear)
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        y = wrapped(x)
    assert torch.equal(y, linear(x)) and wrapped.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager from then on, no second warning
        assert torch.equal(wrapped(x), linear(x))
    assert wrapped.out_features == 2  # attributes pass through
    assert len(list(wrapped.parameters())) == 2  # the weights once, not twice


@cuda
def test_compiled_vae_encoder_matches_eager_with_gradients():
    from animate4d.backend.priors.guidance import encode_images

    torch.manual_seed(0)
    vae = architectures.build("vae", tiny=True).cuda().half().eval().requires_grad_(False)
    rgb = torch.rand(2, 3, 32, 32, device="cuda", requires_grad=True)
    results = []
    for parts in ((), ("vae",)):
        compiling.apply({"vae": vae}, parts, "cuda")
        torch.manual_seed(1)  # the latent sample's noise
        latents = encode_images(vae, rgb, 32)
        (grad,) = torch.autograd.grad(latents.float().square().sum(), rgb)
        results.append((latents.float(), grad))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2)
    assert torch.allclose(ga, gb, atol=2e-2 * ga.abs().max().item(), rtol=5e-2)
    assert ga.abs().sum() > 0
