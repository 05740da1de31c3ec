"""`python -m benchmarks encoder-graphs`: the encoder's saved activations, counted."""

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.encoder_graphs import run, saved_bytes


def test_saved_activations_grow_with_pixels_and_batch_and_leave_out_the_weights():
    out = run(build_parser().parse_args(["encoder-graphs", "--tiny", "64x1", "64x4", "128x1"]))
    small, four, big = (out["shapes"][k] for k in ("64x1", "64x4", "128x1"))
    assert small["per_image_mb"] > 0 and four["per_image_mb"] == small["per_image_mb"]
    assert big["per_image_mb"] == pytest.approx(4 * small["per_image_mb"], rel=0.15)


def test_the_count_is_of_activations_not_weights():
    from animate4d.backend.priors import architectures

    vae = architectures.build("vae", tiny=True).eval().requires_grad_(False)
    weights = sum(p.numel() * 2 for p in vae.parameters())
    # At 8 px the activations are a few kB; the weights alone would be far more.
    assert 0 < saved_bytes(vae, 8) < weights
    with pytest.raises(SystemExit):
        build_parser().parse_args(["encoder-graphs", "4096x1"])
