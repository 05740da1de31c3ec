"""Prompts to text embeddings, with the object's learned token (textual inversion) spliced in,
and Animate124's view-dependent prompts."""

from __future__ import annotations

import torch

PLACEHOLDER = "<a4d-object>"


def add_placeholder(tokenizer, text_encoder, vector: torch.Tensor | None = None,
                    initializer: str = "object") -> int:
    """Give the tokenizer the placeholder token and the text encoder a row for it, set to
    `vector` or else to the embedding of the word `initializer` (its first token: a real CLIP
    vocabulary holds a class noun as one). Idempotent. Returns the token id."""
    if PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_tokens([PLACEHOLDER])
    token = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    emb = text_encoder.get_input_embeddings()
    if emb.num_embeddings <= token:
        text_encoder.resize_token_embeddings(token + 1)
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        if vector is None:
            init = tokenizer(initializer, add_special_tokens=False).input_ids[:1] or [0]
            emb.weight[token] = emb.weight[init[0]]
        else:
            emb.weight[token] = vector.to(emb.weight)
    return token


def encode(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), tokens, width) last hidden states, padded to the tokenizer's length."""
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    ids = ids.clamp(max=text_encoder.get_input_embeddings().num_embeddings - 1)
    return text_encoder(ids.to(text_encoder.device))[0]


DIRECTIONS = ("front", "side", "back")


def direction_prompts(prompt: str) -> list[str]:
    """The prompt once per direction of `DIRECTIONS` (Animate124's "<text>, <d> view")."""
    return [f"{prompt}, {d} view" for d in DIRECTIONS]


def direction_weights(azimuth_deg: float) -> tuple[float, float, float]:
    """Weights of the front, side and back prompts' embeddings for a view at this azimuth
    relative to the reference (0 = front): linear from front at 0 through side at +-90 to back
    at 180, as Animate124 blends its SD text embeddings (nerf/utils.py). The polar angle plays
    no part: it has no overhead prompt."""
    a = abs((azimuth_deg + 180) % 360 - 180) / 90  # 0 front, 1 side, 2 back
    if a < 1:
        return 1 - a, a, 0.0
    return 0.0, 2 - a, a - 1
