"""The VAEs' long-sequence attention equals the stock attention, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from animate4d.backend.priors import architectures, attention  # noqa: E402


def test_chunked_attention_equals_sdpa_with_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    out = attention.chunked_attention(q, k, v, chunk=8)  # 5 chunks, the last one short
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, ref, atol=1e-6)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_vae_encodes_the_same_through_the_long_sequence_processor(monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    chunked, calls = attention.chunked_attention, []
    monkeypatch.setattr(attention, "chunked_attention",
                        lambda *a: calls.append(a[0].shape) or chunked(*a))
    torch.manual_seed(0)
    vae = architectures.build("vae", tiny=True).double().eval().requires_grad_(False)
    rgb = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    results = []
    for processor in (AttnProcessor2_0(), attention.LongSequenceAttention(min_tokens=1,
                                                                          chunk=5)):
        vae.set_attn_processor(processor)
        latents = vae.encode(rgb * 2 - 1).latent_dist.mean
        (grad,) = torch.autograd.grad(latents.square().sum(), rgb)
        results.append((latents, grad))
    (a, ga), (b, gb) = results
    assert calls and calls[0][-2] > 5  # the mid-block's latent tokens, in several chunks
    assert torch.allclose(a, b, atol=1e-8) and torch.allclose(ga, gb, atol=1e-8)
    assert ga.abs().sum() > 0


def test_short_sequences_keep_the_stock_processor_path(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "chunked_attention", lambda *a: calls.append(a))
    vae = architectures.build("vae", tiny=True).eval()
    attention.use_for_vae(vae)  # min_tokens 1,024: a 32-px image has 16 latent tokens
    vae.encode(torch.rand(1, 3, 32, 32))
    assert not calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_the_gpu_at_the_refine_size_matches_sdpa():
    """16,384 tokens x one 512-wide head (the SD VAE at 1024 px), fp16."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1, 16384, 512, generator=g, device="cuda", dtype=torch.float16)
               .requires_grad_(True) for _ in range(3))
    out = attention.chunked_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out.float() * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref.float() * w).sum(), (q, k, v))
    assert (out - ref).abs().max() < 2e-3
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a - b).abs().max() < 2e-2 * b.abs().max()


@pytest.mark.parametrize("setting, chunked", [(None, True), ("stock", False)])
def test_loaded_vaes_get_the_chunked_processor_unless_switched_off(
        tiny_models, monkeypatch, setting, chunked):
    from animate4d.backend.priors import loading
    from animate4d.backend.runtime import switches

    env = {} if setting is None else {"ANIMATE4D_VAE_ATTENTION": setting}
    with switches.use(switches.from_environ(env)):
        vae = loading.load("sd", tiny_models).parts["vae"]
    kinds = {type(p) for p in vae.attn_processors.values()}
    assert (attention.LongSequenceAttention in kinds) is chunked
    assert len(kinds) == 1
