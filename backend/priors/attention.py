"""Exact attention for the VAEs' one 512-wide head on long sequences, in checkpointed chunks.

Why: refinement encodes two 1024-px renders with gradients, so the VAE's mid-block attention
sees 16,384 tokens with one head of 512 channels: too wide for the flash kernels, and PyTorch
falls back to a generic memory-efficient kernel whose backward is the largest single item in
refinement's step. Here the same softmax(q k^T / sqrt(d)) v is computed per
chunk of queries as two large matmuls and a softmax in fp32 (the scores in fp32 as the fused
kernels keep them), and each chunk is recomputed in the backward pass instead of storing the
16,384^2 probabilities, so memory stays at one chunk's scratch.

`LongSequenceAttention` is a diffusers attention processor: shorter sequences, masks, cross
attention and normed q/k go to the stock `AttnProcessor2_0` unchanged.

On by default for every VAE self-attention over >= 1,024 tokens, in chunks of 1,024 queries:
faster than PyTorch's kernels at every sequence length the stages use, most of all at
refinement's 16,384 (`python -m benchmarks attention`, figures in docs/BENCHMARKS.md).
`ANIMATE4D_VAE_ATTENTION=stock` keeps diffusers' processor.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..runtime import switches


def _block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      chunk: int = 1024) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, H, N, D) tensors, `chunk` queries at a time."""
    if q.shape[-2] <= chunk:
        return _block(q, k, v)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    out = [checkpoint(_block, q[..., i : i + chunk, :], k, v, use_reentrant=False) if grad
           else _block(q[..., i : i + chunk, :], k, v) for i in range(0, q.shape[-2], chunk)]
    return torch.cat(out, dim=-2)


class LongSequenceAttention:
    """Self-attention over at least `min_tokens` tokens in checkpointed chunks; anything else
    through diffusers' `AttnProcessor2_0`."""

    def __init__(self, min_tokens: int = 1024, chunk: int = 1024):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.min_tokens, self.chunk = min_tokens, chunk
        self.stock = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        tokens = (hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.ndim == 4
                  else hidden_states.shape[1])
        if (tokens < self.min_tokens or encoder_hidden_states is not None
                or attention_mask is not None or attn.spatial_norm is not None
                or attn.norm_q is not None or attn.norm_k is not None):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                              *args, **kwargs)
        residual, shape = hidden_states, hidden_states.shape
        x = hidden_states
        if x.ndim == 4:
            x = x.view(shape[0], shape[1], -1).transpose(1, 2)
        b = x.shape[0]
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head = k.shape[-1] // attn.heads
        q, k, v = (y.view(b, -1, attn.heads, head).transpose(1, 2) for y in (q, k, v))
        x = chunked_attention(q, k, v, self.chunk)
        x = x.transpose(1, 2).reshape(b, -1, attn.heads * head).to(q.dtype)
        x = attn.to_out[1](attn.to_out[0](x))
        if len(shape) == 4:
            x = x.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            x = x + residual
        return x / attn.rescale_output_factor


def enabled() -> bool:
    """On unless the `vae_attention` switch is 'stock' (ANIMATE4D_VAE_ATTENTION=stock)."""
    return switches.active().vae_attention != "stock"


def use_for_vae(vae) -> None:
    """Give every attention layer of a diffusers VAE the long-sequence processor."""
    vae.set_attn_processor(LongSequenceAttention())
