"""The VAEs' single 512-wide-head self-attention, forward + backward, fp16: PyTorch's SDPA
against `priors.attention.chunked_attention`, eager and under torch.compile.

    python -m benchmarks attention --device cuda [--shape 16x1024 --shape 1x16384 --json OUT]

Shapes are BATCHxTOKENS: 1x16384 is refinement's 1024-px encode, 16x1024 the dynamic stage's
16 frames at 256 px, 1x4096 the static stage's SD VAE at 512 px. The choice it informed is in
docs/DECISIONS.md (VAE self-attention in checkpointed query chunks).
"""

from __future__ import annotations

import argparse
import time

from . import device_name, int_in, pick_device, report

MAX_TOKENS = 65536  # 4x refinement's; SDPA's math fallback would need tokens^2 scores


def _shape(text: str) -> tuple[int, int]:
    try:
        batch, tokens = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write BATCHxTOKENS, e.g. 16x1024") from None
    if not (1 <= batch <= 64 and 1 <= tokens <= MAX_TOKENS):
        raise argparse.ArgumentTypeError(f"{text!r}: batch 1-64 and tokens 1-{MAX_TOKENS}")
    return batch, tokens


def _time(fn, shape, device, dtype, iters: int) -> dict:
    import torch

    q, k, v = (torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    for _ in range(3):
        fn(q, k, v).float().square().mean().backward()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        fn(q, k, v).float().square().mean().backward()
    if cuda:
        torch.cuda.synchronize()
    return {"ms": round((time.perf_counter() - start) / iters * 1e3, 3),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3)
            if cuda else None}


def run(args) -> dict:
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from animate4d.backend.priors.attention import chunked_attention

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    out = {"benchmark": "attention", "device": device_name(device), "head": args.head,
           "chunk": args.chunk,
           "torch": torch.__version__, "shapes": {}}
    chunked = lambda q, k, v: chunked_attention(q, k, v, args.chunk)  # noqa: E731
    variants = {"sdpa": sdpa, "chunked": chunked}
    if cuda:  # the CPU's compile needs a C++ toolchain and says nothing useful
        variants["chunked_compiled"] = torch.compile(chunked)
    for batch, tokens in args.shape or [(1, 16384), (16, 1024), (1, 4096), (1, 1024)]:
        shape, text = (batch, 1, tokens, args.head), f"{batch}x{tokens}"
        out["shapes"][text] = {name: _time(fn, shape, device, dtype, args.iters)
                               for name, fn in variants.items()}
        print(text, out["shapes"][text], flush=True)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("attention", help="the VAEs' one-head attention: SDPA vs chunked",
                       description=__doc__)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--shape", action="append", type=_shape, metavar="BATCHxTOKENS")
    p.add_argument("--head", type=int, default=512, choices=range(8, 1025), metavar="8-1024")
    p.add_argument("--chunk", type=int, default=1024, choices=range(1, MAX_TOKENS + 1),
                   metavar="1-65536")
    p.add_argument("--iters", type=int_in(1, 1000), default=20, help="timed calls (1-1000)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
