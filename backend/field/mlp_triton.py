"""The fields' small ReLU MLPs (2 or 3 layers) as fused Triton kernels (CUDA only).

Why: the MLPs are tiny (32 -> 64 -> 64 -> 4) and run on millions of points per render, so
in PyTorch they are memory-bound: every layer writes and re-reads (n, 64) activations, the
ReLU and its backward are passes of their own, and each bias gradient is another reduction
(together a large share of a render step's kernels; docs/BENCHMARKS.md).
Here a program takes a block of rows through every layer in registers; the backward pass
recomputes the activations instead of storing them (they are cheap to recompute, costly to
keep), and each program adds its rows' weight gradients into its own partial sums, which
are summed once at the end (a fixed order: no atomics, deterministic for a given device).

The matmuls are `tl.dot` on float32 inputs, TF32 on tensor cores: the same precision as the
PyTorch path under `field.use_tensor_cores`. The kernels also run on the CPU under Triton's
interpreter (`TRITON_INTERPRET=1`), which is how the suite checks them without a GPU.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 64  # rows per program (forward) and per loop turn (backward)
# TF32 as PyTorch's matmuls under `use_tensor_cores`: "ieee" (fp32 FMA) makes the render
# step several times slower, and "tf32x3" fails with an illegal memory access in Triton 3.6
# (docs/BENCHMARKS.md).
PRECISION = "tf32"


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())  # tl.dot wants every side >= 16


if triton is not None:

    @triton.jit
    def _load_t(w_ptr, rows: tl.constexpr, cols: tl.constexpr, R: tl.constexpr,
                C: tl.constexpr):
        """W (rows, cols), row-major, as its transpose (C, R) padded with zeros: x @ W^T is
        then tl.dot(x, result)."""
        r = tl.arange(0, R)[None, :]
        c = tl.arange(0, C)[:, None]
        return tl.load(w_ptr + r * cols + c, mask=(r < rows) & (c < cols), other=0.0)

    @triton.jit
    def _load_w(w_ptr, rows: tl.constexpr, cols: tl.constexpr, R: tl.constexpr,
                C: tl.constexpr):
        """W (rows, cols) padded to (R, C): dy @ W is tl.dot(dy, result)."""
        r = tl.arange(0, R)[:, None]
        c = tl.arange(0, C)[None, :]
        return tl.load(w_ptr + r * cols + c, mask=(r < rows) & (c < cols), other=0.0)

    @triton.jit
    def _load_vec(ptr, n: tl.constexpr, N: tl.constexpr):
        i = tl.arange(0, N)
        return tl.load(ptr + i, mask=i < n, other=0.0)

    @triton.jit
    def _cols(rows, n, kk, x_row, x_grp, K: tl.constexpr, XF: tl.constexpr):
        """Offsets and mask of rows x columns of an input seen as (n, K / XF, XF) with strides
        (x_row, x_grp, 1): plain (n, K) rows, or the hash grid's level-major (n, L, F)."""
        off = (rows.to(tl.int64)[:, None] * x_row + (kk // XF).to(tl.int64)[None, :] * x_grp
               + (kk % XF)[None, :])
        return off, (rows < n)[:, None] & (kk < K)[None, :]

    @triton.jit
    def _layers(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K: tl.constexpr, H: tl.constexpr,
                KP: tl.constexpr, HP: tl.constexpr, MID: tl.constexpr, PREC: tl.constexpr):
        """The hidden layers' pre-activations a1 (a2) and the last hidden activation. The
        weights are read here, at each call (from L1/L2): the backward kernel's loop would
        spill registers if it held them beside its gradient sums."""
        a1 = tl.dot(x, _load_t(w1_ptr, H, K, HP, KP), input_precision=PREC)
        a1 += _load_vec(b1_ptr, H, HP)[None, :]
        h = tl.maximum(a1, 0.0)
        a2 = a1
        if MID:
            a2 = tl.dot(h, _load_t(w2_ptr, H, H, HP, HP), input_precision=PREC)
            a2 += _load_vec(b2_ptr, H, HP)[None, :]
            h = tl.maximum(a2, 0.0)
        return a1, a2, h

    # Integers that change with the number of rows are not specialised on (Triton compiles
    # a variant per "divisible by 16" pattern of its integer arguments: with row counts
    # changing every step, new variants compiled for ~1 s each in the middle of runs).
    @triton.jit(do_not_specialize=["x_row", "x_grp", "n"])
    def _forward_kernel(x_ptr, x_row, x_grp, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
                        y_ptr, n, K: tl.constexpr, XF: tl.constexpr, H: tl.constexpr,
                        O: tl.constexpr,
                        KP: tl.constexpr, HP: tl.constexpr, OP: tl.constexpr,
                        MID: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = rows < n
        kk = tl.arange(0, KP)
        xoff, xok = _cols(rows, n, kk, x_row, x_grp, K, XF)
        x = tl.load(x_ptr + xoff, mask=xok, other=0.0)
        a1, a2, h = _layers(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, H, KP, HP, MID, PREC)
        y = tl.dot(h, _load_t(w3_ptr, O, H, OP, HP), input_precision=PREC)
        y += _load_vec(b3_ptr, O, OP)[None, :]
        oo = tl.arange(0, OP)
        tl.store(y_ptr + rows.to(tl.int64)[:, None] * O + oo[None, :], y,
                 mask=ok[:, None] & (oo < O)[None, :])

    @triton.jit(do_not_specialize=["x_row", "x_grp", "gx_row", "gx_grp", "n", "blocks",
                                   "programs"])
    def _backward_kernel(x_ptr, x_row, x_grp, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
                         gy_ptr, gx_ptr, gx_row, gx_grp, part_ptr, n, blocks, programs,
                         K: tl.constexpr, XF: tl.constexpr, H: tl.constexpr,
                         O: tl.constexpr,
                         KP: tl.constexpr, HP: tl.constexpr, OP: tl.constexpr,
                         MID: tl.constexpr, NEED_X: tl.constexpr, PREC: tl.constexpr,
                         BLOCK: tl.constexpr):
        """Each program walks the row blocks pid, pid + programs, ... and writes its partial
        weight and bias gradients (transposed, padded) to its own slot of `part_ptr`."""
        pid = tl.program_id(0)
        kk = tl.arange(0, KP)
        oo = tl.arange(0, OP)
        g1 = tl.zeros((KP, HP), tl.float32)
        g2 = tl.zeros((HP, HP), tl.float32)
        g3 = tl.zeros((HP, OP), tl.float32)
        gb1 = tl.zeros((HP,), tl.float32)
        gb2 = tl.zeros((HP,), tl.float32)
        gb3 = tl.zeros((OP,), tl.float32)
        for blk in range(pid, blocks, programs):
            rows = blk * BLOCK + tl.arange(0, BLOCK)
            ok = rows < n
            xoff, xok = _cols(rows, n, kk, x_row, x_grp, K, XF)
            x = tl.load(x_ptr + xoff, mask=xok, other=0.0)
            gy = tl.load(gy_ptr + rows.to(tl.int64)[:, None] * O + oo[None, :],
                         mask=ok[:, None] & (oo < O)[None, :], other=0.0)
            a1, a2, h = _layers(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, H, KP, HP, MID, PREC)
            # Rows past n have gy = 0, so they add nothing below.
            g3 += tl.dot(tl.trans(h), gy, input_precision=PREC)
            gb3 += tl.sum(gy, 0)
            w3 = _load_w(w3_ptr, O, H, OP, HP)
            d = tl.where(a2 > 0.0, tl.dot(gy, w3, input_precision=PREC), 0.0)  # d / d a_last
            if MID:
                g2 += tl.dot(tl.trans(tl.maximum(a1, 0.0)), d, input_precision=PREC)
                gb2 += tl.sum(d, 0)
                w2 = _load_w(w2_ptr, H, H, HP, HP)
                d = tl.where(a1 > 0.0, tl.dot(d, w2, input_precision=PREC), 0.0)
            g1 += tl.dot(tl.trans(x), d, input_precision=PREC)
            gb1 += tl.sum(d, 0)
            if NEED_X:
                gx = tl.dot(d, _load_w(w1_ptr, H, K, HP, KP), input_precision=PREC)
                gxoff, _ = _cols(rows, n, kk, gx_row, gx_grp, K, XF)
                tl.store(gx_ptr + gxoff, gx, mask=xok)
        # The partial sums, one flat slot per program: g1 | g2 | g3 | gb1 | gb2 | gb3.
        base = part_ptr + pid * (KP * HP + HP * HP + HP * OP + 2 * HP + OP)
        hh = tl.arange(0, HP)
        tl.store(base + kk[:, None] * HP + hh[None, :], g1)
        base += KP * HP
        tl.store(base + hh[:, None] * HP + hh[None, :], g2)
        base += HP * HP
        tl.store(base + hh[:, None] * OP + oo[None, :], g3)
        base += HP * OP
        tl.store(base + hh, gb1)
        tl.store(base + HP + hh, gb2)
        tl.store(base + 2 * HP + oo, gb3)


def available(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


def _programs(x: torch.Tensor, blocks: int) -> int:
    """Backward programs: a few per SM, each looping over many row blocks (few partials)."""
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    return max(1, min(blocks, 4 * sms))


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """x (n, K) or (n, G, F) as (n, G, F) with adjacent features, in the strides it has
    (the hash grid's level-major output is read where it lies, not copied)."""
    x3 = x.unsqueeze(1) if x.dim() == 2 else x
    return x3 if x3.stride(2) == 1 else x3.contiguous()


class FusedMLP(torch.autograd.Function):
    """x (n, K), or (n, G, F) with G F = K (a hash grid's levels, any row and level strides),
    fp32 -> y (n, O) through Linear(K, H), ReLU, [Linear(H, H), ReLU,] Linear(H, O): weights
    as nn.Linear keeps them ((out, in)); w2 and b2 None for two layers. d/dx comes back in
    x's shape, and in its strides where its features are adjacent."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, w3, b3):
        x3 = _grouped(x)
        n, k = x3.shape[0], x3.shape[1] * x3.shape[2]
        h, o = w1.shape[0], w3.shape[0]
        mid = w2 is not None
        ws = [w.contiguous() for w in (w1, b1, w2 if mid else w1, b2 if mid else b1, w3, b3)]
        y = torch.empty(n, o, device=x.device, dtype=x.dtype)
        dims = dict(K=k, XF=x3.shape[2], H=h, O=o, KP=_pow2(k), HP=_pow2(h), OP=_pow2(o),
                    MID=mid, PREC=PRECISION)
        if n:
            _forward_kernel[(triton.cdiv(n, BLOCK),)](x3, x3.stride(0), x3.stride(1), *ws, y,
                                                      n, **dims, BLOCK=BLOCK)
        ctx.save_for_backward(x3, *ws)
        ctx.dims, ctx.mid, ctx.shape = dims, mid, x.shape
        return y

    @staticmethod
    def backward(ctx, gy):
        x3, *ws = ctx.saved_tensors
        dims, mid = ctx.dims, ctx.mid
        n = x3.shape[0]
        kp, hp, op = dims["KP"], dims["HP"], dims["OP"]
        k, h, o = dims["K"], dims["H"], dims["O"]
        need_x = ctx.needs_input_grad[0]
        gx = torch.empty_like(x3) if need_x else x3  # x's strides (empty_like keeps them)
        blocks = triton.cdiv(n, BLOCK)
        programs = _programs(x3, blocks) if n else 1
        slot = kp * hp + hp * hp + hp * op + 2 * hp + op
        part = torch.zeros(programs, slot, device=x3.device, dtype=torch.float32)
        if n:
            _backward_kernel[(programs,)](x3, x3.stride(0), x3.stride(1), *ws,
                                          gy.contiguous().float(), gx, gx.stride(0),
                                          gx.stride(1), part, n, blocks, programs, **dims,
                                          NEED_X=need_x, BLOCK=BLOCK, num_warps=8)
        total = part.sum(0)
        sizes = [kp * hp, hp * hp, hp * op, hp, hp, op]
        g1, g2, g3, gb1, gb2, gb3 = torch.split(total, sizes)
        return (gx.view(ctx.shape) if need_x else None,
                g1.view(kp, hp)[:k, :h].T, gb1[:h],
                g2.view(hp, hp)[:h, :h].T if mid else None, gb2[:h] if mid else None,
                g3.view(hp, op)[:h, :o].T, gb3[:o])
