"""The hash grid's d-linear interpolation as Triton kernels (CUDA only).

Same layout and the same arithmetic as `hashgrid._lookup` (dense levels first, int32 hash with
wrap-around products, "mod T" as a mask), so the two agree to float rounding; a GPU test checks
outputs and both gradients against the PyTorch path. Why kernels: the PyTorch path materialises
(n, L, 2^d) indices, weights and gathered rows; here each (block of points, level) program keeps
them in registers, reads each corner's F features once, and the backward pass adds into the
table with atomics and writes d/dx per level.

One program per (BLOCK rows, level): all programs of a level run close together in time, so
that level's rows stay in L2 (the coarse levels are small), and the (n, L, F) output is stored
level-major, so that each program writes (and the backward pass reads) one contiguous run.
With `group` G > 1 the backward pass's programs take BLOCK / G points with their G stacked
copies as (points, G) tensors, so copies in the same cell add into a row with one atomic (the
renderer's normals: a point and its three finite-difference neighbours). The coarsest dense
levels (a few thousand rows that millions of points share) add their table gradient into
REPLICAS copies of those rows, one per program modulo REPLICAS, summed afterwards: the
atomics on one row are spread over copies instead of queueing at one address. The kernels also run
on the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, CPU tensors, calling
`interpolate_function(...).apply` directly).
"""

from __future__ import annotations

import functools

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds and some platforms have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 128
# A program's BLOCK rows run on 4 warps, one row per thread; in the grouped backward pass
# (G > 1) on 4 / G warps, so that each thread holds one point's G copies and merges them in
# its registers instead of merging across threads (about twice as fast on the grouped
# canonical backward; docs/BENCHMARKS.md).
WARPS = 4
# Table-gradient copies for the leading dense levels of at most REPLICATED_ROWS rows in all
# (the canonical grid's five coarsest levels, the motion grid's coarsest): millions of points share
# those few rows, and their atomics would queue at one address. The copies are summed after
# the pass; they cost about 0.1 GB while it runs (docs/BENCHMARKS.md).
REPLICAS = 32
REPLICATED_ROWS = 2**19


def available(device) -> bool:
    """Whether the kernels can run on `device` (a CUDA device, with Triton installed)."""
    return triton is not None and torch.device(device).type == "cuda"


if triton is not None:

    @triton.jit
    def _corner(c0, c1, c2, c3, f0, f1, f2, f3, s1, s2, s3, dense, off,
                C: tl.constexpr, D: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                P3: tl.constexpr, HASH_MASK: tl.constexpr):
        """Table row of corner C (bit i = its offset in dimension i) and its weight's factors
        (the caller multiplies them, or leaves one out for d w / d frac_i)."""
        o0 = C & 1
        o1 = (C >> 1) & 1
        o2 = (C >> 2) & 1
        o3 = (C >> 3) & 1
        k0 = c0 + o0
        k1 = c1 + o1
        k2 = c2 + o2
        w0 = f0 * o0 + (1.0 - f0) * (1 - o0)
        w1 = f1 * o1 + (1.0 - f1) * (1 - o1)
        w2 = f2 * o2 + (1.0 - f2) * (1 - o2)
        hashed = k0 ^ (k1 * P1) ^ (k2 * P2)
        flat = k0 + k1 * s1 + k2 * s2
        if D == 4:
            k3 = c3 + o3
            w3 = f3 * o3 + (1.0 - f3) * (1 - o3)
            hashed = hashed ^ (k3 * P3)
            flat = flat + k3 * s3
        else:
            w3 = f0 * 0.0 + 1.0
        idx = tl.where(dense, flat, hashed & HASH_MASK) + off
        return idx, w0, w1, w2, w3

    @triton.jit
    def _prepare(x_ptr, res_ptr, strides_ptr, offsets_ptr, m, D: tl.constexpr,
                 G: tl.constexpr, N_DENSE: tl.constexpr, BLOCK: tl.constexpr):
        """This program's level and points, and per dimension the cell and the fraction, as
        (BLOCK, G) tensors: point i's G copies are rows i, m + i, ..., (G - 1) m + i."""
        lvl = tl.program_id(1)
        copy = tl.arange(0, G)[None, :] * m
        rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK))[:, None] + copy
        ok = rows - copy < m
        res = tl.load(res_ptr + lvl)
        off = tl.load(offsets_ptr + lvl)
        s1 = tl.load(strides_ptr + lvl * D + 1)
        s2 = tl.load(strides_ptr + lvl * D + 2)
        p0 = tl.load(x_ptr + rows * D + 0, mask=ok, other=0.0) * res
        p1 = tl.load(x_ptr + rows * D + 1, mask=ok, other=0.0) * res
        p2 = tl.load(x_ptr + rows * D + 2, mask=ok, other=0.0) * res
        b0 = tl.floor(p0)
        b1 = tl.floor(p1)
        b2 = tl.floor(p2)
        if D == 4:
            s3 = tl.load(strides_ptr + lvl * D + 3)
            p3 = tl.load(x_ptr + rows * D + 3, mask=ok, other=0.0) * res
        else:
            s3 = s2 * 0
            p3 = p2 * 0.0
        b3 = tl.floor(p3)
        return (lvl, rows, ok, b0.to(tl.int32), b1.to(tl.int32), b2.to(tl.int32),
                b3.to(tl.int32), p0 - b0, p1 - b1, p2 - b2, p3 - b3, s1, s2, s3, lvl < N_DENSE,
                off, res)

    @triton.jit
    def _first(v, G: tl.constexpr):
        """Copy 0 of each point, (BLOCK, G) -> (BLOCK, 1)."""
        if G == 1:
            return v
        return tl.sum(tl.where((tl.arange(0, G) == 0)[None, :], v, 0), 1)[:, None]

    @triton.jit
    def _gather(emb_ptr, idx, idx0, same, use, feat, F: tl.constexpr, G: tl.constexpr):
        """Table rows (BLOCK, G, F) of one corner: copy 0's row read once and shared by the
        copies in the same cell; the others read where `use`. Copy 0's row is read when any
        copy in its cell uses it, not only copy 0: a point on a cell face weighs its far
        corners 0 while a neighbour inside the cell does not (points clamped to the box)."""
        if G == 1:
            return tl.load(emb_ptr + idx[:, :, None] * F + feat[None, None, :],
                           mask=use[:, :, None], other=0.0)
        need0 = tl.sum((use & same).to(tl.int32), 1)[:, None] > 0
        v0 = tl.load(emb_ptr + idx0[:, :, None] * F + feat[None, None, :],
                     mask=need0[:, :, None], other=0.0)
        vk = tl.load(emb_ptr + idx[:, :, None] * F + feat[None, None, :],
                     mask=(use & ~same)[:, :, None], other=0.0)
        return tl.where(same[:, :, None], v0, vk)

    @triton.jit
    def _table_add(gemb_ptr, idx, idx0, same, part, live, feat, F: tl.constexpr,
                   G: tl.constexpr):
        """Add one corner's weighted gradients (BLOCK, G, F) into table rows idx."""
        if G == 1:
            tl.atomic_add(gemb_ptr + idx[:, :, None] * F + feat[None, None, :], part,
                          mask=live[:, :, None], sem="relaxed")
        else:
            # The copies in copy 0's cell (the finite-difference neighbours of a normal, on
            # all but the finest levels) add into its row once.
            merged = tl.sum(tl.where(same[:, :, None], part, 0.0), 1)
            any_live = tl.sum((live & same).to(tl.int32), 1) > 0
            tl.atomic_add(gemb_ptr + idx0 * F + feat[None, :], merged,
                          mask=any_live[:, None], sem="relaxed")
            tl.atomic_add(gemb_ptr + idx[:, :, None] * F + feat[None, None, :], part,
                          mask=(live & ~same)[:, :, None], sem="relaxed")

    @triton.jit
    def _at(rows, lvl, row_stride, lvl_stride):
        """Element offset of (row, level) in an (n, L, ...) tensor of the given strides, in
        int64 (level-major outputs reach past 2^31 elements at about 70 M rows)."""
        return rows.to(tl.int64) * row_stride + lvl.to(tl.int64) * lvl_stride

    # Integers that change with the number of points are not specialised on (Triton
    # compiles a variant per "divisible by 16" pattern of its integer arguments: with row
    # counts changing every step, new variants compiled for ~1 s each in the middle of runs).
    @triton.jit(do_not_specialize=["out_row", "out_lvl", "m"])
    def _forward_kernel(x_ptr, emb_ptr, out_ptr, out_row, out_lvl, res_ptr, strides_ptr,
                        offsets_ptr, m,
                        D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, G: tl.constexpr,
                        N_DENSE: tl.constexpr, HASH_MASK: tl.constexpr, P1: tl.constexpr,
                        P2: tl.constexpr, P3: tl.constexpr, BLOCK: tl.constexpr):
        lvl, rows, ok, c0, c1, c2, c3, f0, f1, f2, f3, s1, s2, s3, dense, off, res = _prepare(
            x_ptr, res_ptr, strides_ptr, offsets_ptr, m, D, G, N_DENSE, BLOCK)
        feat = tl.arange(0, F)
        acc = tl.zeros((BLOCK, G, F), tl.float32)
        for c in tl.static_range(2**D):
            idx, w0, w1, w2, w3 = _corner(c0, c1, c2, c3, f0, f1, f2, f3, s1, s2, s3, dense,
                                          off, c, D, P1, P2, P3, HASH_MASK)
            w = w0 * w1 * w2 * w3
            idx0 = _first(idx, G)
            # A corner of weight 0 (a point on a cell's face, e.g. every corner at t + 1 when
            # the motion field asks about t = 0) is not read at all.
            vals = _gather(emb_ptr, idx, idx0, idx == idx0, ok & (w != 0.0), feat, F, G)
            acc += w[:, :, None] * vals
        tl.store(out_ptr + _at(rows, lvl, out_row, out_lvl)[:, :, None] + feat[None, None, :],
                 acc, mask=ok[:, :, None])

    @triton.jit(do_not_specialize=["grad_row", "grad_lvl", "m", "n"])
    def _backward_kernel(x_ptr, emb_ptr, grad_ptr, grad_row, grad_lvl, gemb_ptr, gx_ptr,
                         res_ptr, strides_ptr, offsets_ptr, m, n, rep_ptr, D: tl.constexpr,
                         F: tl.constexpr, L: tl.constexpr,
                         G: tl.constexpr, N_DENSE: tl.constexpr, HASH_MASK: tl.constexpr,
                         P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
                         NEED_EMB: tl.constexpr, NEED_X: tl.constexpr, BLOCK: tl.constexpr,
                         REP_LEVELS: tl.constexpr, REP_ROWS: tl.constexpr,
                         REPLICAS: tl.constexpr):
        lvl, rows, ok, c0, c1, c2, c3, f0, f1, f2, f3, s1, s2, s3, dense, off, res = _prepare(
            x_ptr, res_ptr, strides_ptr, offsets_ptr, m, D, G, N_DENSE, BLOCK)
        feat = tl.arange(0, F)
        g = tl.load(grad_ptr + _at(rows, lvl, grad_row, grad_lvl)[:, :, None]
                    + feat[None, None, :], mask=ok[:, :, None], other=0.0)
        gx0 = tl.zeros((BLOCK, G), tl.float32)
        gx1 = tl.zeros((BLOCK, G), tl.float32)
        gx2 = tl.zeros((BLOCK, G), tl.float32)
        gx3 = tl.zeros((BLOCK, G), tl.float32)
        for c in tl.static_range(2**D):
            idx, w0, w1, w2, w3 = _corner(c0, c1, c2, c3, f0, f1, f2, f3, s1, s2, s3, dense,
                                          off, c, D, P1, P2, P3, HASH_MASK)
            idx0 = _first(idx, G)
            same = idx == idx0
            if NEED_EMB:
                w = w0 * w1 * w2 * w3
                part = w[:, :, None] * g
                live = ok & (w != 0.0)
                if REP_LEVELS > 0:
                    if lvl < REP_LEVELS:  # this program's copy of the coarse levels' rows
                        copy_rows = (tl.program_id(0) % REPLICAS).to(tl.int64) * (REP_ROWS * F)
                        _table_add(rep_ptr + copy_rows, idx, idx0, same, part, live, feat, F,
                                   G)
                    else:
                        _table_add(gemb_ptr, idx, idx0, same, part, live, feat, F, G)
                else:
                    _table_add(gemb_ptr, idx, idx0, same, part, live, feat, F, G)
            if NEED_X:
                vals = _gather(emb_ptr, idx, idx0, same, ok, feat, F, G)
                dot = tl.sum(vals * g, axis=2)
                # d w / d frac_i: factor i replaced by its slope, -1 or +1.
                gx0 += dot * (2.0 * (c & 1) - 1.0) * w1 * w2 * w3
                gx1 += dot * (2.0 * ((c >> 1) & 1) - 1.0) * w0 * w2 * w3
                gx2 += dot * (2.0 * ((c >> 2) & 1) - 1.0) * w0 * w1 * w3
                if D == 4:
                    gx3 += dot * (2.0 * ((c >> 3) & 1) - 1.0) * w0 * w1 * w2
        if NEED_X:
            base = gx_ptr + _at(rows, lvl, D, n * D)  # (L, n, D): summed over levels
            tl.store(base + 0, gx0 * res, mask=ok)
            tl.store(base + 1, gx1 * res, mask=ok)
            tl.store(base + 2, gx2 * res, mask=ok)
            if D == 4:
                tl.store(base + 3, gx3 * res, mask=ok)


def _signed(p: int) -> int:
    return p - 2**32 if p >= 2**31 else p


def replicated_levels(level_rows: tuple[int, ...], n_dense: int,
                      limit: int = REPLICATED_ROWS) -> tuple[int, int]:
    """(levels, rows): the leading dense levels whose rows add up to at most `limit`, whose
    table gradient the backward pass accumulates in REPLICAS copies."""
    levels = rows = 0
    for size in level_rows[:n_dense]:
        if rows + size > limit:
            break
        levels, rows = levels + 1, rows + size
    return levels, rows


@functools.cache
def interpolate_function(n_dense: int, hash_mask: int, primes: tuple[int, ...],
                         level_rows: tuple[int, ...] = ()) -> type:
    """An autograd Function for one grid layout (like `hashgrid._interpolate`), running the
    kernels: (x (n, d) fp32 in [0, 1], table (rows, F) fp32, resolution, strides, offsets,
    group) -> (n, L, F), stored level-major. `group` G > 1 says x holds G stacked copies of
    nearby points (rows k n / G + i): the backward kernel then takes a point's copies
    together and adds their table gradients into a row they share with one atomic. It
    changes no value. `level_rows`: the table rows of each level, which say which coarse
    levels' gradients go through replicas (none if not given)."""
    p = [_signed(v) for v in primes] + [0] * (4 - len(primes))
    consts = dict(N_DENSE=n_dense, HASH_MASK=hash_mask, P1=p[1], P2=p[2], P3=p[3])
    rep_levels, rep_rows = replicated_levels(level_rows, n_dense)

    def launch(kernel, x, group, levels, *args, **kw):
        n, d = x.shape
        group = group if group > 1 and n % group == 0 else 1
        block = max(BLOCK // group, 16)  # the same rows per program
        m = n // group
        warps = max(WARPS // group, 1)
        kernel[(triton.cdiv(m, block), levels)](x, *args, m, D=d, L=levels, G=group,
                                                BLOCK=block, num_warps=warps, **consts, **kw)

    class TritonInterpolate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, embeddings, resolution, strides, offsets, group=1):
            x = x.contiguous()
            levels, f = len(resolution), embeddings.shape[1]
            # (n, L, F) stored level-major: a program (rows, one level) then writes one
            # contiguous run, where (n, L, F) rows would take 8 bytes every 128 (written back
            # to memory by partial sectors).
            out = torch.empty(levels, x.shape[0], f, device=x.device,
                              dtype=torch.float32).transpose(0, 1)
            # Grouping is for the backward pass's atomics: in the forward pass the reads it
            # shares hit L2 anyway, and grouping there measured slower.
            launch(_forward_kernel, x, 1, levels, embeddings, out, out.stride(0),
                   out.stride(1), resolution, strides, offsets, F=f)
            ctx.save_for_backward(x, embeddings, resolution, strides, offsets)
            ctx.group = group
            return out

        @staticmethod
        def backward(ctx, grad):
            x, embeddings, resolution, strides, offsets = ctx.saved_tensors
            n, d = x.shape
            levels, f = len(resolution), embeddings.shape[1]
            need_x, need_emb = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            if not (need_x or need_emb):
                return None, None, None, None, None, None
            # Read in whatever (row, level) strides it comes in (the fused MLP's gradient is
            # level-major like the output); only the features must be adjacent.
            grad = grad.float()
            if grad.stride(2) != 1:
                grad = grad.transpose(0, 1).contiguous().transpose(0, 1)
            gemb = torch.zeros_like(embeddings) if need_emb else embeddings
            gx = torch.empty(levels, n, d, device=x.device) if need_x else x
            # Without table gradients there is nothing to merge, and d/dx alone is faster
            # ungrouped.
            group = ctx.group if need_emb else 1
            replicas = REPLICAS if need_emb and rep_levels and REPLICAS > 1 else 1
            rep = (torch.zeros(replicas, rep_rows, f, device=x.device) if replicas > 1
                   else gemb)
            launch(_backward_kernel, x, group, levels, embeddings, grad, grad.stride(0),
                   grad.stride(1), gemb, gx, resolution, strides, offsets, n=n,
                   rep_ptr=rep, F=f, NEED_EMB=need_emb, NEED_X=need_x,
                   REP_LEVELS=rep_levels if replicas > 1 else 0, REP_ROWS=rep_rows,
                   REPLICAS=replicas)
            if replicas > 1:
                gemb[:rep_rows] += rep.sum(0)
            return (gx.sum(0) if need_x else None, gemb if need_emb else None,
                    None, None, None, None)

    return TritonInterpolate
