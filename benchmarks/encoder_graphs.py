"""`python -m benchmarks encoder-graphs`: what a prior's VAE encoder keeps for its backward.

Every SDS step encodes its renders with gradients: the encoder's saved tensors (what autograd
keeps for the backward) live until the gradient is taken back to the renders, and at
ControlNet-tile's 1024 px they are a large part of refine's peak (docs/DECISIONS.md, "Each
prior's SDS gradient goes back to the renders..."). This counts them, device-free: the
encoder runs eagerly on the CPU with the real architecture and random weights, and each saved
tensor's storage is counted once (the weights not at all), at 2 bytes an element (fp16, as
the priors run on a GPU). A compiled encoder (Inductor recomputes cheap operations in the
backward) keeps less.
"""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, int]:
    try:
        size, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give SIZExBATCH, e.g. 1024x2") from None
    if not (8 <= size <= 2048 and 1 <= batch <= 64):
        raise argparse.ArgumentTypeError(f"{text!r}: size 8-2048 px, batch 1-64")
    return size, batch


def saved_bytes(vae, size: int) -> int:
    """Bytes the encoder saves for its backward for one image at `size` px (fp16)."""
    import torch

    from animate4d.backend.priors.guidance import encode_images

    storages: dict[int, torch.Tensor] = {}
    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}  # held anyway

    def pack(t):
        if t.is_floating_point() and t.untyped_storage().data_ptr() not in weights:
            # Held so that a freed storage's address is not counted again for another.
            storages.setdefault(t.untyped_storage().data_ptr(), t)

    def unpack(_):
        raise RuntimeError("counting only: no backward")

    rgb = torch.rand(1, 3, 64, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        encode_images(vae, rgb, size)
    return sum(t.untyped_storage().nbytes() // t.element_size() * 2 for t in storages.values())


def run(args) -> dict:
    import torch

    from animate4d.backend.priors import architectures

    torch.manual_seed(0)
    vae = architectures.build("vae", tiny=args.tiny).eval().requires_grad_(False)
    out = {"benchmark": "encoder-graphs", "vae": "tiny" if args.tiny else "real",
           "bytes_per_element": 2, "shapes": {}}
    per_size: dict[int, int] = {}
    for size, batch in args.shapes:
        if size not in per_size:
            per_size[size] = saved_bytes(vae, size)
        out["shapes"][f"{size}x{batch}"] = {
            "per_image_mb": round(per_size[size] / 1e6, 1),
            "gb": round(batch * per_size[size] / 1e9, 2)}
    return out


def add_parser(sub) -> None:
    from . import report

    p = sub.add_parser("encoder-graphs", help="what a prior's VAE encoder saves for its "
                       "backward, per SIZExBATCH (CPU, fp16 bytes)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("shapes", nargs="+", type=_shape, metavar="SIZExBATCH",
                   help="render size fed to the encoder and images per step: refine's "
                        "ControlNet-tile 1024x2, the video prior 256x16, Zero123 256x1")
    p.add_argument("--tiny", action="store_true", help="the tiny VAE (tests)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
