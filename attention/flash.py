"""FlashAttention-2 in Triton: forward and backward, causal or not, with dropout.

Math (Dao 2023, Algorithms 1 and 2), for one (batch, head), queries Q (N_q x d), keys K and
values V (N_k x d), softmax scale s:

    S = s Q K^T,   P = softmax(S) (row-wise),   O = dropout(P) V,   LSE_i = log sum_j exp(S_ij)

Forward: Q is cut into row blocks of B_r rows, K and V into column blocks of B_c rows. One
program owns one Q block and streams over the K/V blocks, keeping the running row maximum m,
the running normaliser l and the unnormalised output O~ in registers (the online softmax):

    m_new = max(m, rowmax(S_ij)),   P~_ij = exp(S_ij - m_new),
    l     = exp(m - m_new) l + rowsum(P~_ij),
    O~    = exp(m - m_new) O~ + dropout(P~_ij) V_j,        and at the end  O = O~ / l,
    LSE   = m + log l   (saved for the backward pass, returned on request).

Exponentials are taken base 2 with log2(e) folded into the scale (one FMA per score).

Backward: P is recomputed from Q, K and the saved LSE (no N x N tensor is ever stored):

    P_ij = exp(S_ij - LSE_i),   dV = dropout(P)^T dO,   dP = dropout'(dO V^T),
    D_i  = rowsum(dO_i * O_i) - dLSE_i,   dS = P * (dP - D),   dQ = s dS K,   dK = s dS^T Q

One kernel owns a Q block and streams over K/V blocks (dQ stays in registers; its prologue
also computes D for its rows); a second owns a K/V block and streams over Q blocks (dK, dV
stay in registers). Two passes recompute P twice but need no atomics, and each output is
written exactly once.

Causal masking is aligned bottom-right, as in flash-attn >= 2.1: query i sees key j when
j <= i + N_k - N_q, so a single new query (N_q = 1) sees the whole KV cache. A query row that
sees no key (only possible when N_q > N_k) gets O = 0 and LSE = +inf.

Only the blocks that cross the diagonal (or the ragged end of K) pay for the mask: each loop
is split into an unmasked part and a masked part.

Dropout uses a counter-based RNG (Philox, eight 16-bit draws a call) keyed by (seed, element), so the
backward pass regenerates exactly the forward mask and a given seed is reproducible.

Tensor layout is (batch, seq, heads, head_dim), the layout a fused QKV projection produces,
so the model never transposes; any strides are accepted as long as head_dim is contiguous.
"""

import functools
import math
import os
import threading

import torch
import triton
import triton.language as tl

from attention.checks import check_qkv

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


# --------------------------------------------------------------------------------------------
# shared device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def dropout_keep(seed, bh, rows, col0, N_Q, N_K, dropout_p, B_c: tl.constexpr):
    """Keep-mask [rows, B_c] for attention dropout over query `rows` (1-D) and keys col0 ..
    col0 + B_c (col0 a multiple of 8). One Philox call (`tl.randint4x`: four 32-bit words) draws
    eight 16-bit numbers, one per key of a group of 8, as FlashAttention-2's CUDA kernel splits
    its words into bytes: the RNG costs an eighth of one Philox per element (tl.rand's). An
    element is dropped when its number is below p * 2^16, so the kept fraction is 1 - p to
    within 2^-16; every kernel draws the mask from the same (seed, batch*head, query, key
    group) counter, so the backward pass regenerates exactly the forward mask."""
    groups = col0 // 8 + tl.arange(0, B_c // 8)
    offsets = (bh * N_Q + rows[:, None]).to(tl.int64) * tl.cdiv(N_K, 8) + groups[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, offsets)
    u = tl.join(tl.join(tl.join(w0 & 0xFFFF, w0 >> 16), tl.join(w1 & 0xFFFF, w1 >> 16)),
                tl.join(tl.join(w2 & 0xFFFF, w2 >> 16), tl.join(w3 & 0xFFFF, w3 >> 16)))
    return tl.reshape(u, [rows.shape[0], B_c]).to(tl.float32) >= dropout_p * 65536.0


@triton.jit
def _dropout_mask_kernel(Mask, seed_ptr, N_Q, N_K, dropout_p, B_r: tl.constexpr, B_c: tl.constexpr):
    """Writes the keep-mask the attention kernels use (for tests and the reference path)."""
    bh = tl.program_id(2)
    rows = tl.program_id(0) * B_r + tl.arange(0, B_r)
    col0 = tl.program_id(1) * B_c
    keep = dropout_keep(tl.load(seed_ptr), bh, rows, col0, N_Q, N_K, dropout_p, B_c)
    rows, cols = rows[:, None], col0 + tl.arange(0, B_c)[None, :]
    tl.store(Mask + (bh * N_Q + rows).to(tl.int64) * N_K + cols, keep, mask=(rows < N_Q) & (cols < N_K))


def dropout_mask(seed: torch.Tensor, batch: int, heads: int, n_q: int, n_k: int, dropout_p: float):
    """The (batch, heads, N_q, N_k) boolean keep-mask that `seed` draws inside the kernels."""
    mask = torch.empty(batch, heads, n_q, n_k, dtype=torch.bool, device=seed.device)
    grid = (triton.cdiv(n_q, 16), triton.cdiv(n_k, 16), batch * heads)
    _dropout_mask_kernel[grid](mask, seed, n_q, n_k, dropout_p, B_r=16, B_c=16)
    return mask


def new_seed(device) -> torch.Tensor:
    """A fresh dropout seed drawn from torch's generator (so torch.manual_seed governs it)."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


@triton.jit
def _fp32(x):
    """Scalar arguments as fp32: Inductor passes Python floats as fp64, which would otherwise
    promote the fp32 accumulators."""
    return tl.cast(x, tl.float32)


@triton.jit
def _index(x, WIDE: tl.constexpr):
    """x in int64 when some tensor spans 2^31 or more elements (WIDE), so that no offset
    (batch x stride, row x stride, batch*head x N for LSE) overflows 32 bits; int32 otherwise,
    so GPT-2 sizes compile to exactly the 32-bit address arithmetic they had."""
    if WIDE:
        y = x.to(tl.int64)
    else:
        y = x
    return y  # one return: the compiler (unlike the interpreter) rejects a second one after a static if


@triton.jit
def _schedule(N, B: tl.constexpr, LAST_FIRST: tl.constexpr, HEADS_OUTER: tl.constexpr, WIDE: tl.constexpr):
    """(batch*head, block) of this program in a 1-D grid of batch*heads x cdiv(N, B) programs.
    HEADS_OUTER: the blocks of one head run consecutively, so the rows all of them stream (K
    and V, or Q and dO) come from L2 after the first; otherwise one block of every head runs
    before the next block of any, and at large batch x heads a wave's K/V overflow L2. But
    heads innermost with LAST_FIRST (the last row blocks, which do the most work under causal
    masking, reversed to go first) schedules the longest programs of all heads first, which
    shortens the tail. The host picks (heads_outer; measured in notes.md)."""
    n_blocks = tl.cdiv(N, B)
    pid = tl.program_id(0)
    if HEADS_OUTER:
        bh = pid // n_blocks
        i = pid % n_blocks
    else:
        n_bh = tl.num_programs(0) // n_blocks
        bh = pid % n_bh
        i = pid // n_bh
    if LAST_FIRST:
        i = n_blocks - 1 - i
    return _index(bh, WIDE), i


@triton.jit
def _key_range(i, N_Q, N_K, window, DocRow, DocEndRow, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               DOC: tl.constexpr, MASK_EDGE: tl.constexpr, B_r: tl.constexpr, B_c: tl.constexpr):
    """Key columns [start, end) that Q block i visits, in three parts: [full_start,
    unmasked_end) are visible to all its rows (no mask); [start, full_start) hold the far edge
    of the window or of the rows' documents, and [unmasked_end, end) the causal diagonal, the
    rows' document ends (non-causal) or the ragged end of K (masked). Each row sees a key
    interval whose ends never decrease from one row to the next, so the block's first and last
    rows bound it. Without a window or documents
    start = full_start = 0. MASK_EDGE=False when zero-loaded K/V rows past N_K are harmless (the
    dQ pass). DocRow, DocEndRow: this batch row's document starts and ends, by key position."""
    shift = N_K - N_Q
    if CAUSAL:
        end = tl.minimum(tl.maximum((i + 1) * B_r + shift, 0), N_K)
        unmasked_end = tl.minimum(tl.maximum(i * B_r + shift + 1, 0), N_K) // B_c * B_c
    elif MASK_EDGE:
        end = N_K
        unmasked_end = N_K // B_c * B_c
    else:
        end = N_K
        unmasked_end = N_K
    if WINDOW or DOC:
        first = i * B_r + shift  # key positions of the block's first and last real rows
        last = tl.minimum(i * B_r + B_r, N_Q) - 1 + shift
        lo_first = 0  # the first key each of them sees
        lo_last = 0
        if WINDOW:  # row r sees keys (r + shift - window, r + shift]
            lo_first = first - window + 1
            lo_last = last - window + 1
        if DOC:  # ... and none before its document's first token
            lo_first = tl.maximum(lo_first, tl.load(DocRow + tl.maximum(first, 0)))
            lo_last = tl.maximum(lo_last, tl.load(DocRow + tl.maximum(last, 0)))
            if not CAUSAL:  # ... nor past its last (causal rows stop at themselves, inside it)
                end = tl.minimum(tl.load(DocEndRow + last), end)
                unmasked_end = tl.minimum(tl.load(DocEndRow + first) // B_c * B_c, unmasked_end)
        start = tl.maximum(lo_first, 0) // B_c * B_c
        full_start = tl.minimum(tl.cdiv(tl.maximum(lo_last, 0), B_c) * B_c, unmasked_end)
    else:
        start = 0
        full_start = 0
    return start, full_start, unmasked_end, end


@triton.jit
def _doc_bounds(DocRow, DocEndRow, rows, N_Q, shift, CAUSAL: tl.constexpr, DOC: tl.constexpr):
    """The keys [lo, hi) each query row may see under document masking (its document's
    tokens; hi only without causal, whose rows stop at themselves); the rows themselves,
    unused, where not needed."""
    lo = rows
    hi = rows
    if DOC:
        pos = tl.maximum(tl.minimum(rows, N_Q - 1) + shift, 0)
        lo = tl.load(DocRow + pos)
        if not CAUSAL:
            hi = tl.load(DocEndRow + pos)
    return lo, hi


@triton.jit
def _visible(rows, cols, shift, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """Which (row, col) pairs of a tile pass the causal and window masks (bottom-right aligned)."""
    ok = cols <= rows + shift
    if WINDOW:
        ok = ok & (cols > rows + shift - window)
    return ok


@triton.jit
def _tile(t, List, G: tl.constexpr, B: tl.constexpr):
    """The first position of an inner loop's tile: t itself (G = 0), or, under a block mask, of
    the t-th B-wide tile of the G-wide blocks that List names. One loop over every tile of the
    listed blocks, rather than a loop per block, lets Triton's pipeliner fetch the next block's
    tiles while this one computes."""
    if G == 0:
        return t
    else:
        return tl.load(List + t // (G // B)) * G + t % (G // B) * B


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn, start, end,
               offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo, doc_hi,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOC: tl.constexpr,
               DROPOUT: tl.constexpr, B_c: tl.constexpr, TMA: tl.constexpr, List=None, G: tl.constexpr = 0):
    """Streams K/V blocks [start, end) through the online softmax of one Q block. With TMA,
    K_block and V_block are tensor descriptors (the copy engine fetches whole tiles and fills
    rows past N_K with zeros); otherwise base pointers. With G (a block mask's block size),
    [start, end) counts B_c-wide tiles of the G-wide blocks that List names instead (_tile)."""
    for t in range(start, end, B_c if G == 0 else 1):
        start_n = _tile(t, List, G, B_c)
        cols = start_n + offs_n
        if TMA:
            kT = tl.trans(K_block.load([start_n, 0]))
            v = V_block.load([start_n, 0])
        elif MASKED:
            kT = tl.load(K_block + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N_K, other=0.0)
            v = tl.load(V_block + cols[:, None] * stride_vn + offs_d[None, :], mask=cols[:, None] < N_K, other=0.0)
        else:
            kT = tl.load(K_block + cols[None, :] * stride_kn + offs_d[:, None])
            v = tl.load(V_block + cols[:, None] * stride_vn + offs_d[None, :])
        s = tl.dot(q, kT) * qk_scale  # scores in log2 units
        if MASKED:
            valid = cols[None, :] < N_K
            if CAUSAL:
                valid = valid & _visible(offs_m[:, None], cols[None, :], shift, window, CAUSAL, WINDOW)
            if DOC:
                valid = valid & (cols[None, :] >= doc_lo[:, None])
                if not CAUSAL:
                    valid = valid & (cols[None, :] < doc_hi[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see no key yet stay at -inf
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(dropout_keep(seed, bh, offs_m, start_n, N_Q, N_K, dropout_p, B_c), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def flash2_fwd_kernel(Q, K, V, O, LSE, seed_ptr, DocStart, DocEnd, Blocks,
                      stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,
                      stride_vb, stride_vn, stride_vh, stride_ob, stride_on, stride_oh, stride_blh, stride_blr,
                      H, BH_BUCKET, NQ_BUCKET, NK_BUCKET, N_Q, N_K, qk_scale, dropout_p, window, n_blocks,
                      CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOC: tl.constexpr, SPARSE: tl.constexpr,
                      DROPOUT: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
                      WIDE: tl.constexpr, HEADS_OUTER: tl.constexpr, B_r: tl.constexpr, B_c: tl.constexpr,
                      TMA: tl.constexpr):
    bh, i = _schedule(N_Q, B_r, CAUSAL, HEADS_OUTER, WIDE)
    b = bh // H
    h = bh % H
    qk_scale, dropout_p = _fp32(qk_scale), _fp32(dropout_p)
    offs_m = i * B_r + _index(tl.arange(0, B_r), WIDE)
    offs_n = _index(tl.arange(0, B_c), WIDE)
    offs_d = tl.arange(0, D)
    K_block = K + b * stride_kb + h * stride_kh
    V_block = V + b * stride_vb + h * stride_vh
    if TMA:  # Hopper: one (N x D) descriptor per matrix of this (batch, head)
        Q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh, [N_Q, D], [stride_qn, 1], [B_r, D])
        K_block = tl.make_tensor_descriptor(K_block, [N_K, D], [stride_kn, 1], [B_c, D])
        V_block = tl.make_tensor_descriptor(V_block, [N_K, D], [stride_vn, 1], [B_c, D])
        q = Q_desc.load([i * B_r, 0])
    else:
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
                    mask=offs_m[:, None] < N_Q, other=0.0)
    seed = tl.load(seed_ptr)

    m_i = tl.full([B_r], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([B_r], dtype=tl.float32)
    acc = tl.zeros([B_r, D], dtype=tl.float32)

    shift = N_K - N_Q
    DocRow = DocStart + b * N_K
    DocEndRow = DocEnd + b * N_K
    doc_lo, doc_hi = _doc_bounds(DocRow, DocEndRow, offs_m, N_Q, shift, CAUSAL, DOC)
    if SPARSE:  # the block mask's lists for this Q block's row of G x G blocks: full ones, then partial ones
        row = Blocks + h * stride_blh + (i * B_r // G) * stride_blr
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn,
                                   0, tl.load(row) * (G // B_c), offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift,
                                   qk_scale, dropout_p, window, doc_lo, doc_hi, False, CAUSAL, WINDOW, DOC, DROPOUT, B_c, TMA,
                                   row + 2, G)
        for t in range(0, tl.load(row + 1)):
            c = tl.load(row + 2 + n_blocks + t) * G
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn,
                                       c, tl.minimum(c + G, N_K), offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift,
                                       qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_c, TMA)
    else:
        start, full_start, unmasked_end, end = _key_range(i, N_Q, N_K, window, DocRow, DocEndRow, CAUSAL, WINDOW, DOC, True,
                                                          B_r, B_c)
        if WINDOW or DOC:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn,
                                       start, full_start, offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift,
                                       qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_c, TMA)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn,
                                   full_start, unmasked_end, offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift,
                                   qk_scale, dropout_p, window, doc_lo, doc_hi, False, CAUSAL, WINDOW, DOC, DROPOUT, B_c, TMA)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_block, V_block, stride_kn, stride_vn,
                                   unmasked_end, end, offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift,
                                   qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_c, TMA)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    if DROPOUT:
        acc = acc / (l_safe * (1.0 - dropout_p))[:, None]
    else:
        acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) / 1.4426950408889634)
    row_ok = offs_m < N_Q
    tl.store(LSE + bh * N_Q + offs_m, lse, mask=row_ok)
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _row_delta(o, do, dLSE_row, offs_m, row_ok, HAS_DLSE: tl.constexpr):
    """D_i = rowsum(dO_i * O_i) - dLSE_i (the dLSE term makes the returned LSE differentiable)."""
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(dLSE_row + offs_m, mask=row_ok, other=0.0)
    return delta


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE_row, Delta_row, stride_qn, stride_don,
                    start, end, offs_m0, offs_n, key0, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p,
                    window, doc_lo, doc_hi, MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                    DOC: tl.constexpr, DROPOUT: tl.constexpr, B_r: tl.constexpr, B_c: tl.constexpr, List=None,
                    G: tl.constexpr = 0):
    """Accumulates dK_j, dV_j over query blocks [start, end), in the transposed frame (S^T);
    with G, over the B_r-wide tiles of the blocks List names, as _fwd_inner."""
    for t in range(start, end, B_r if G == 0 else 1):
        start_m = _tile(t, List, G, B_r)
        rows = start_m + offs_m0
        row_ok = rows < N_Q
        qT = tl.load(Q_block + rows[None, :] * stride_qn + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        do = tl.load(dO_block + rows[:, None] * stride_don + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # Rows past N_Q read LSE = +inf, so their P is exactly 0 and they add nothing.
        lse = tl.load(LSE_row + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta_row + rows, mask=row_ok, other=0.0)
        sT = tl.dot(k, qT) * qk_scale
        pT = tl.math.exp2(sT - lse[None, :] * 1.4426950408889634)
        if MASKED:  # causal diagonal blocks, the window's or the documents' edge
            if CAUSAL:
                visible = _visible(rows[None, :], offs_n[:, None], shift, window, True, WINDOW)
            else:
                visible = rows[None, :] < N_Q
                if DOC:
                    visible = visible & (rows[None, :] + shift >= doc_lo[:, None])
            if DOC:  # the row is inside the key's document
                visible = visible & (rows[None, :] + shift < doc_hi[:, None])
            pT = tl.where(visible, pT, 0.0)
        dpT = tl.dot(v, tl.trans(do)).to(tl.float32)
        if DROPOUT:
            keep = tl.trans(dropout_keep(seed, bh, rows, key0, N_Q, N_K, dropout_p, B_c))  # the S^T frame
            inv_keep = 1.0 / (1.0 - dropout_p)
            dv += tl.dot(tl.where(keep, pT * inv_keep, 0.0).to(do.dtype), do)
            dpT = tl.where(keep, dpT * inv_keep, 0.0)
        else:
            dv += tl.dot(pT.to(do.dtype), do)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
    return dk, dv


@triton.jit
def flash2_bwd_dkdv_kernel(Q, K, V, dO, dK, dV, LSE, Delta, seed_ptr, DocStart, DocEnd, Blocks,
                           stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,
                           stride_vb, stride_vn, stride_vh, stride_dob, stride_don, stride_doh,
                           stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                           stride_blh, stride_blr,
                           H, BH_BUCKET, NQ_BUCKET, NK_BUCKET, N_Q, N_K, qk_scale, sm_scale, dropout_p, window,
                           n_blocks,
                           CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOC: tl.constexpr, SPARSE: tl.constexpr,
                           DROPOUT: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
                           WIDE: tl.constexpr, HEADS_OUTER: tl.constexpr, B_r: tl.constexpr, B_c: tl.constexpr):
    bh, j = _schedule(N_K, B_c, False, HEADS_OUTER, WIDE)  # low j sees the most queries under causal: longest-first already
    b = bh // H
    h = bh % H
    qk_scale, sm_scale, dropout_p = _fp32(qk_scale), _fp32(sm_scale), _fp32(dropout_p)
    offs_m0 = _index(tl.arange(0, B_r), WIDE)
    offs_n = j * B_c + _index(tl.arange(0, B_c), WIDE)
    offs_d = tl.arange(0, D)
    col_ok = offs_n[:, None] < N_K
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=col_ok, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=col_ok, other=0.0)
    Q_block = Q + b * stride_qb + h * stride_qh
    dO_block = dO + b * stride_dob + h * stride_doh
    seed = tl.load(seed_ptr)
    dk = tl.zeros([B_c, D], dtype=tl.float32)
    dv = tl.zeros([B_c, D], dtype=tl.float32)

    shift = N_K - N_Q
    rows_end = tl.cdiv(N_Q, B_r) * B_r
    if CAUSAL:
        # Query rows that see any of this block start at j*B_c - shift; rows from
        # j*B_c + B_c - 1 - shift on see all of it ...
        start = tl.maximum(j * B_c - shift, 0) // B_r * B_r
        mid = tl.minimum(tl.maximum(tl.cdiv(j * B_c + B_c - 1 - shift, B_r) * B_r, start), rows_end)
    else:
        start = 0
        mid = 0
    full_end = N_Q
    end = N_Q
    DocRow = DocEnd + b * N_K
    DocStartRow = DocStart + b * N_K
    doc_lo = offs_n
    doc_hi = offs_n
    if DOC:  # one past the last position of each key's document (and, without causal, its first)
        doc_hi = tl.load(DocRow + tl.minimum(offs_n, N_K - 1))
        if not CAUSAL:  # rows before the first key's document see none of the block; from the last key's, all
            doc_lo = tl.load(DocStartRow + tl.minimum(offs_n, N_K - 1))
            start = tl.maximum(tl.load(DocStartRow + j * B_c) - shift, 0) // B_r * B_r
            s_last = tl.load(DocStartRow + tl.minimum(j * B_c + B_c, N_K) - 1)
            mid = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(s_last - shift, 0), B_r) * B_r, start), rows_end)
    if WINDOW or DOC:
        # ... and the rows at key positions below lim(c) see key c: lim(c) = c + window, or the
        # end of c's document, whichever comes first. Rows below lim(first key) see all of the
        # block; rows from lim(last key) on see none of it.
        c_first = j * B_c
        c_last = tl.minimum(j * B_c + B_c, N_K) - 1
        lim_first = N_K
        lim_last = N_K
        if WINDOW:
            lim_first = c_first + window
            lim_last = c_last + window
        if DOC:
            lim_first = tl.minimum(lim_first, tl.load(DocRow + c_first))
            lim_last = tl.minimum(lim_last, tl.load(DocRow + c_last))
        end = tl.minimum(tl.cdiv(tl.maximum(lim_last - shift, 0), B_r) * B_r, rows_end)
        full_end = tl.minimum(tl.maximum(tl.maximum(lim_first - shift, 0) // B_r * B_r, mid), end)
    if SPARSE:  # the transposed lists: this K/V block's column of G x G blocks, full ones, then partial ones
        col = Blocks + h * stride_blh + (j * B_c // G) * stride_blr
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE + bh * N_Q, Delta + bh * N_Q,
                                 stride_qn, stride_don, 0, tl.load(col) * (G // B_r), offs_m0, offs_n, j * B_c, offs_d, seed,
                                 bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo, doc_hi, False, CAUSAL, WINDOW, DOC,
                                 DROPOUT, B_r, B_c, col + 2, G)
        for t in range(0, tl.load(col + 1)):
            r = tl.load(col + 2 + n_blocks + t) * G
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE + bh * N_Q, Delta + bh * N_Q,
                                     stride_qn, stride_don, r, r + G, offs_m0, offs_n, j * B_c, offs_d, seed, bh, N_Q, N_K,
                                     shift, qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_r, B_c)
    else:
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE + bh * N_Q, Delta + bh * N_Q,
                                 stride_qn, stride_don, start, mid, offs_m0, offs_n, j * B_c, offs_d, seed, bh, N_Q, N_K,
                                 shift, qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_r, B_c)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE + bh * N_Q, Delta + bh * N_Q,
                                 stride_qn, stride_don, mid, full_end, offs_m0, offs_n, j * B_c, offs_d, seed, bh, N_Q, N_K,
                                 shift, qk_scale, dropout_p, window, doc_lo, doc_hi, False, CAUSAL, WINDOW, DOC, DROPOUT, B_r, B_c)
        if WINDOW or DOC:
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_block, dO_block, LSE + bh * N_Q, Delta + bh * N_Q,
                                     stride_qn, stride_don, full_end, end, offs_m0, offs_n, j * B_c, offs_d, seed, bh, N_Q,
                                     N_K, shift, qk_scale, dropout_p, window, doc_lo, doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_r, B_c)
    tl.store(dK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             (dk * sm_scale).to(dK.dtype.element_ty), mask=col_ok)
    tl.store(dV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(dV.dtype.element_ty), mask=col_ok)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, start, end,
                  offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo, doc_hi,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOC: tl.constexpr,
                  DROPOUT: tl.constexpr, B_c: tl.constexpr, List=None, G: tl.constexpr = 0):
    """Accumulates dQ_i over key blocks [start, end) (with G, over the tiles of the blocks List
    names, as _fwd_inner). Keys past N_K load as zero rows of K and V, which makes their dS K
    contribution exactly zero: only the causal mask is needed."""
    for t in range(start, end, B_c if G == 0 else 1):
        start_n = _tile(t, List, G, B_c)
        cols = start_n + offs_n
        col_ok = cols[None, :] < N_K
        kT = tl.load(K_block + cols[None, :] * stride_kn + offs_d[:, None], mask=col_ok, other=0.0)
        vT = tl.load(V_block + cols[None, :] * stride_vn + offs_d[:, None], mask=col_ok, other=0.0)
        s = tl.dot(q, kT) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            if CAUSAL:
                visible = _visible(offs_m[:, None], cols[None, :], shift, window, True, WINDOW)
                if DOC:
                    visible = visible & (cols[None, :] >= doc_lo[:, None])
            else:  # without causal only documents mask (their edge blocks)
                visible = (cols[None, :] >= doc_lo[:, None]) & (cols[None, :] < doc_hi[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, vT).to(tl.float32)
        if DROPOUT:
            keep = dropout_keep(seed, bh, offs_m, start_n, N_Q, N_K, dropout_p, B_c)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT))
    return dq


@triton.jit
def flash2_bwd_dq_kernel(Q, K, V, dO, dQ, LSE, Delta, seed_ptr, O, dLSE, DocStart, DocEnd, Blocks,
                         stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,
                         stride_vb, stride_vn, stride_vh, stride_dob, stride_don, stride_doh,
                         stride_dqb, stride_dqn, stride_dqh, stride_ob, stride_on, stride_oh, stride_blh, stride_blr,
                         H, BH_BUCKET, NQ_BUCKET, NK_BUCKET, N_Q, N_K, qk_scale, sm_scale, dropout_p, window,
                         n_blocks,
                         CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOC: tl.constexpr, SPARSE: tl.constexpr,
                         DROPOUT: tl.constexpr, HAS_DLSE: tl.constexpr, D: tl.constexpr, G: tl.constexpr, WIDE: tl.constexpr, HEADS_OUTER: tl.constexpr, B_r: tl.constexpr,
                         B_c: tl.constexpr):
    """Runs before the dK/dV kernel: its prologue computes D for its rows and writes it for
    that kernel (one launch fewer than a separate preprocessing pass)."""
    bh, i = _schedule(N_Q, B_r, CAUSAL, HEADS_OUTER, WIDE)
    b = bh // H
    h = bh % H
    offs_m = i * B_r + _index(tl.arange(0, B_r), WIDE)
    offs_n = _index(tl.arange(0, B_c), WIDE)
    offs_d = tl.arange(0, D)
    qk_scale, sm_scale, dropout_p = _fp32(qk_scale), _fp32(sm_scale), _fp32(dropout_p)
    row_ok = offs_m < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(dO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(LSE + bh * N_Q + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = _row_delta(o, do, dLSE + bh * N_Q, offs_m, row_ok, HAS_DLSE)
    tl.store(Delta + bh * N_Q + offs_m, delta, mask=row_ok)
    K_block = K + b * stride_kb + h * stride_kh
    V_block = V + b * stride_vb + h * stride_vh
    seed = tl.load(seed_ptr)
    dq = tl.zeros([B_r, D], dtype=tl.float32)

    shift = N_K - N_Q
    DocRow = DocStart + b * N_K
    DocEndRow = DocEnd + b * N_K
    doc_lo, doc_hi = _doc_bounds(DocRow, DocEndRow, offs_m, N_Q, shift, CAUSAL, DOC)
    if SPARSE:  # as in the forward
        row = Blocks + h * stride_blh + (i * B_r // G) * stride_blr
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, 0, tl.load(row) * (G // B_c),
                           offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo,
                           doc_hi, False, CAUSAL, WINDOW, DOC, DROPOUT, B_c, row + 2, G)
        for t in range(0, tl.load(row + 1)):
            c = tl.load(row + 2 + n_blocks + t) * G
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, c, tl.minimum(c + G, N_K),
                               offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo,
                               doc_hi, CAUSAL, CAUSAL, WINDOW, DOC, DROPOUT, B_c)  # zero-loaded K rows need no mask: only the diagonal does
    else:
        start, full_start, unmasked_end, end = _key_range(i, N_Q, N_K, window, DocRow, DocEndRow, CAUSAL, WINDOW, DOC, False,
                                                          B_r, B_c)
        if WINDOW or DOC:
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, start, full_start,
                               offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo,
                               doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_c)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, full_start, unmasked_end,
                           offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo,
                           doc_hi, False, CAUSAL, WINDOW, DOC, DROPOUT, B_c)
        dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_block, V_block, stride_kn, stride_vn, unmasked_end, end,
                           offs_m, offs_n, offs_d, seed, bh, N_Q, N_K, shift, qk_scale, dropout_p, window, doc_lo,
                           doc_hi, True, CAUSAL, WINDOW, DOC, DROPOUT, B_c)
    tl.store(dQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :],
             (dq * sm_scale).to(dQ.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------------
# launch options: how the kernels are launched, never what they compute
# --------------------------------------------------------------------------------------------
# name -> allowed values, the first the default. Set by `configure` (attention.options in the
# Hydra config); the environment overrides them (see _from_environment).
OPTIONS = {
    "autotune": (True, False),           # tune tiles per shape bucket; False: one fixed config a kernel
    "tuning_cache": (True, False),       # keep tuning results in Triton's cache dir for later processes
    "tma": ("auto", "always", "never"),  # the TMA forward: on Hopper | wherever legal (interpreter too) | never
    "wide": ("auto", "always"),          # int64 offsets where some tensor spans 2^31 elements | always
    "fast_launch": (True, False),        # reuse a compiled kernel per argument signature (see _launch)
    "gluon": ("auto", "off", "plain", "overlap", "specialized", "pingpong"),  # the Gluon forward on Hopper
    # (attention/hopper.py): auto runs a variant only at the shapes hopper.AUTO names, where it was
    # measured faster; a Triton without Gluon keeps the portable forward
    "gluon_backward": (False, True, "atomics", "tma"),  # the Gluon one-kernel backward on Hopper
    # (attention/hopper.py), its dQ added the way measured faster for the shape (True: hopper.DQ_BY_TMA),
    # or always by atomics, or always by TMA reduce-adds (FA3's way)
}
ENVIRONMENT = {"autotune": "FLASH_AUTOTUNE", "tuning_cache": "FLASH_TUNING_CACHE", "tma": "FLASH_TMA",
               "wide": "FLASH_WIDE", "fast_launch": "FLASH_FAST_LAUNCH",
               "gluon": "FLASH_GLUON", "gluon_backward": "FLASH_GLUON_BWD"}
options = {}  # the options in force (configure)


def _from_environment():
    """Options the environment sets, each variable 0 or 1: FLASH_AUTOTUNE=0 (the GPU test grid
    would otherwise tune hundreds of shapes), FLASH_TUNING_CACHE=0 (tune in every process),
    FLASH_TMA=0 | 1 (tma never | always), FLASH_WIDE=1 (wide always), FLASH_FAST_LAUNCH=0
    (Triton's generic launch, to time the difference), FLASH_GLUON=0 | 1 (the Gluon forward
    on Hopper off | its plain variant wherever it applies; unset: auto), FLASH_GLUON_BWD=1 (its
    one-kernel backward; experimental: off until measured faster side by side)."""
    values = {"tma": ("never", "always"), "wide": ("auto", "always"), "gluon": ("off", "plain")}
    out = {}
    for key, var in ENVIRONMENT.items():
        v = os.environ.get(var)
        if v is None:
            continue
        if v not in ("0", "1"):
            raise ValueError(f"{var}={v!r}: 0 or 1")
        out[key] = values.get(key, (False, True))[int(v)]
    return out


def configure(**given):
    """Sets the launch options (OPTIONS) for the process: the caches of compiled kernels and
    tuned tiles are process-wide, so the options are too; a change empties those caches. Keys
    not given take their defaults; the environment overrides both. Under the CPU interpreter
    the kernels run one small fixed config, launched the generic way."""
    for key, value in given.items():
        if key not in OPTIONS:
            raise ValueError(f"flash: no launch option {key!r}; the options are {', '.join(OPTIONS)}")
        if not any(value == a and type(value) is type(a) for a in OPTIONS[key]):  # 1 is not True here
            raise ValueError(f"flash: {key}={value!r} is not one of: {' | '.join(map(str, OPTIONS[key]))}")
    new = {**{k: v[0] for k, v in OPTIONS.items()}, **given, **_from_environment()}
    if INTERPRET:
        new.update(autotune=False, fast_launch=False)
    if new != options:
        options.clear()
        options.update(new)
        _COMPILED.clear()
        _tuned.clear()


# --------------------------------------------------------------------------------------------
# launch configuration: autotuned on GPU, one small fixed config under the CPU interpreter
# --------------------------------------------------------------------------------------------
def _cfg(b_r, b_c, warps, stages, **constexprs):
    return triton.Config({"B_r": b_r, "B_c": b_c, **constexprs}, num_warps=warps, num_stages=stages)


def _fits(cfg, d):
    """Tiles whose fp32 accumulators fit in registers at head dim d (at 128, 8 warps hold
    a 128 x 128 tile)."""
    max_tile = {16: 128 * 128, 32: 128 * 128, 64: 128 * 128, 128: 128 * 64, 256: 64 * 64}[d]
    return cfg.kwargs["B_r"] * cfg.kwargs["B_c"] <= max_tile * (2 if d == 128 and cfg.num_warps == 8 else 1)


def _fixed_config(kernel, d):
    """Launch parameters when not autotuning: the CPU interpreter's small tiles, or on GPU
    rectangular tiles (B_r != B_c, so the correctness grid exercises the block arithmetic)."""
    if INTERPRET:
        return dict(B_r=16, B_c=16)
    if d == 256:
        return dict(B_r=64, B_c=32, num_warps=4, num_stages=2)
    return {"fwd": dict(B_r=128, B_c=64, num_warps=4 if d <= 64 else 8, num_stages=3),
            "dkdv": dict(B_r=32, B_c=128 if d <= 64 else 64, num_warps=4, num_stages=3),
            "dq": dict(B_r=128 if d <= 64 else 64, B_c=32, num_warps=4, num_stages=3)}[kernel]


CONFIGS = {
    "fwd": [_cfg(*tiles, TMA=False) for tiles in [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 64, 8, 4),
            (128, 128, 8, 3), (128, 128, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)]],
    "dkdv": [_cfg(32, 128, 4, 3), _cfg(32, 128, 4, 5), _cfg(64, 128, 8, 3), _cfg(32, 64, 4, 3),
             _cfg(64, 64, 4, 3), _cfg(16, 64, 4, 2), _cfg(32, 32, 4, 2)],
    "dq": [_cfg(128, 32, 4, 3), _cfg(128, 32, 4, 5), _cfg(128, 64, 8, 3), _cfg(64, 32, 4, 3),
           _cfg(64, 64, 4, 3), _cfg(64, 16, 4, 2), _cfg(32, 32, 4, 2)],
}
# Hopper (sm90): the forward may also load Q, K and V through TMA tensor descriptors. It wins
# at some shapes and loses at others (benchmarks/results/h100/notes.md), so these configs join
# the pointer ones and the autotuner chooses per shape.
HOPPER_FWD = [_cfg(128, 128, 8, 3, TMA=True), _cfg(128, 64, 8, 4, TMA=True), _cfg(128, 128, 4, 3, TMA=True),
              _cfg(128, 64, 4, 3, TMA=True)]
KERNELS = {"fwd": flash2_fwd_kernel, "dkdv": flash2_bwd_dkdv_kernel, "dq": flash2_bwd_dq_kernel}
_tuned = {}  # (kernel, head dim, TMA) -> its autotuner


# Decoding with a KV cache (a few queries against a cache that grows by one each step): the
# tuned tiles are sized for many query rows, and the cache length would cross a new tuning
# bucket every doubling. These launches take one small-tile config instead.
DECODE_MAX_N_Q = 16
DECODE_CONFIG = dict(B_r=16, B_c=64, num_warps=4, num_stages=3, TMA=False)  # forward only


def _kernel(name, d, decode=False, tma=False):
    """The kernel to launch and its fixed launch parameters: with autotuning, one autotuner per
    head dim (and with or without the TMA configs) over the configs that fit it (a plain config
    list, which Inductor can also read)."""
    if decode and options["autotune"]:
        return KERNELS[name], DECODE_CONFIG
    if not options["autotune"]:
        return KERNELS[name], {**_fixed_config(name, d), **({"TMA": tma} if name == "fwd" else {})}
    if (name, d, tma) not in _tuned:
        configs = [c for c in CONFIGS[name] + (HOPPER_FWD if tma else []) if _fits(c, d)]
        # D and WIDE are in the key although each autotuner serves one head dim: results persist
        # on disk keyed by these values and the config list, which can be the same for two dims.
        # The sizes enter the key as power-of-two buckets (see `bucket`): batch x heads, because
        # the best tile depends on how many programs fill the GPU, and N_q, N_k, so that a new
        # length in a known bucket (a prompt, evaluation at another context) is not tuned again.
        _tuned[name, d, tma] = triton.autotune(configs, key=["NQ_BUCKET", "NK_BUCKET", "BH_BUCKET", "CAUSAL", "WINDOW",
                                                             "DOC", "SPARSE",
                                                             "DROPOUT", "D", "WIDE"],
                                               cache_results=options["tuning_cache"])(KERNELS[name])
    return _tuned[name, d, tma], {}


@functools.cache
def _device(device):
    """(is Hopper, number of SMs) of a CUDA device, asked once."""
    props = torch.cuda.get_device_properties(device)
    return props.major == 9, props.multi_processor_count


def tma_ok(*tensors):
    """Whether the TMA forward may read these tensors: on Hopper (or tma=always), every (batch,
    head) matrix starting 16-byte aligned with 16-byte aligned row strides, as the copy engine
    requires."""
    if options["tma"] == "never":
        return False
    device = tensors[0].device
    if options["tma"] == "auto" and (device.type != "cuda" or not _device(device)[0]):
        return False
    return all(t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:3]) for t in tensors)


def _scratch(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda" if not INTERPRET else "cpu")


_ALLOCATOR_SET = threading.local()


def _ensure_allocator():
    """Device-side descriptors live in a small global-memory scratch that Triton asks an
    allocator for. Triton keeps the allocator per thread context (a ContextVar), and autograd's
    backward runs in another thread, so it is set once in every thread that launches."""
    if not getattr(_ALLOCATOR_SET, "done", False):
        triton.set_allocator(_scratch)
        _ALLOCATOR_SET.done = True


# --------------------------------------------------------------------------------------------
# host launch path
# --------------------------------------------------------------------------------------------
_COMPILED = {}  # launch signature -> (compiled kernel, trailing constexpr arguments, tile size, TMA)


def _signature(window, *tensors):
    """The launch signature of the tensors the caller did not allocate: what Triton specializes
    a compiled kernel on (dtype, device, 16-byte alignment, and through the strides and shapes,
    every integer argument but the window; outputs allocated here are contiguous, so theirs
    follow from the shapes). The window itself is in it: Triton compiles an integer argument
    equal to 1 into the kernel (and specializes on divisibility by 16), so the kernel built for
    window=1 masks wrongly at window=5. None (no caching) with fast_launch off."""
    if not options["fast_launch"]:
        return None
    return tensors[0].get_device(), window, *[(t.dtype, t.shape, t.stride(), t.data_ptr() % 16 == 0) for t in tensors]


def wide(*tensors):
    """Whether any offset into these tensors can reach 2^31 (the largest is the sum over dims
    of (size - 1) x stride), so the kernels must index in int64."""
    return options["wide"] == "always" or any(sum((n - 1) * s for n, s in zip(t.shape, t.stride())) >= 2**31 - 1
                                              for t in tensors)


def bucket(n):
    """n rounded up to a power of two: the kernels ignore these arguments, the autotuner keys on
    them. Keyed on batch x heads because tiles tuned at batch 1 (small: more programs for the
    SMs) lose at batch 32; keyed on buckets of N instead of N because tuning every new length
    cost seconds per prompt length in generation and per length in a sweep
    (benchmarks/results/h100/notes.md)."""
    return 1 << max(0, n - 1).bit_length()


def heads_outer(device, batch_heads, causal):
    """Program order (see _schedule): heads outermost, for L2 reuse, unless causal masking
    makes longest-first across heads worth more: while one wave of programs (two per SM)
    holds a block of every head (measured on the H100: benchmarks/results/h100/notes.md)."""
    if not causal or device.type != "cuda":
        return True
    return batch_heads > 2 * _device(device)[1]


def _launch(name, D, n, tile, batch_heads, args, constexprs, signature):
    """Launches kernel `name` on a 1-D grid of batch_heads x cdiv(n, tile size) programs
    (`_schedule` maps a program to its head and block); `tile` names the
    tile dimension that cuts n ("B_r" or "B_c").

    Triton's generic launch (autotuner dispatch, argument binding, cache-key hashing) costs
    more host time than a GPT-2-size kernel takes on the GPU (notes.md). So after the first
    launch with the same constexprs and `signature` (see _signature), calls reuse its compiled
    kernel and tuned tiles directly."""
    key = None if signature is None else (name, *constexprs.values(), signature)
    hit = _COMPILED.get(key)  # never under None
    if hit is not None:
        compiled, tail, block, tma = hit
        if tma:
            _ensure_allocator()
        compiled[(batch_heads * triton.cdiv(n, block), 1, 1)](*args, *tail)
        return
    # WIDE and the program order follow from the tensors' shapes and strides, which the
    # signature holds: decided here, once per signature, not on every launch.
    constexprs = {**constexprs, "WIDE": wide(*(a for a in args if isinstance(a, torch.Tensor))),
                  "HEADS_OUTER": heads_outer(args[0].device, batch_heads, constexprs["CAUSAL"])}
    decode = name == "fwd" and n <= DECODE_MAX_N_Q
    tma = name == "fwd" and not decode and tma_ok(*args[:3])
    if tma:
        _ensure_allocator()
    kernel, tiles = _kernel(name, D, decode, tma)
    grid = lambda meta: (batch_heads * triton.cdiv(n, meta[tile]),)  # noqa: E731
    compiled = kernel[grid](*args, **constexprs, **tiles)
    if key is not None:
        chosen = {**constexprs, **(kernel.best_config.kwargs if hasattr(kernel, "best_config") else tiles)}
        tail = tuple(chosen[p] for p in KERNELS[name].arg_names[len(args):])
        if len(_COMPILED) > 4096:  # e.g. one entry per KV-cache length in generation
            _COMPILED.clear()
        _COMPILED[key] = (compiled, tail, chosen[tile], chosen.get("TMA", False))


def _mask_args(seed, doc_start, doc_end, blocks, n_heads):
    """The kernels' mask arguments: the document bounds, a block-list tensor and its (head, row)
    strides (head stride 0 for a layout shared by the heads), the list length; the seed (a real
    pointer) and zeros where there is none."""
    docs = (seed, seed) if doc_start is None else (doc_start, doc_end)
    if blocks is None:
        return *docs, seed, 0, 0, 0
    return *docs, blocks, blocks.stride(0) if blocks.shape[0] == n_heads > 1 else 0, blocks.stride(1), (blocks.shape[2] - 2) // 2


def _gluon_variant(q):
    """The Gluon forward variant the `gluon` option asks for q, or None: off; auto on a Hopper GPU
    at the shapes hopper.AUTO names, and nowhere else (Gluon is imported only on Hopper, and a
    Triton without it keeps the portable forward); a variant named, wherever `supported` allows."""
    variant = options["gluon"]
    if variant == "off":
        return None
    if variant == "auto":
        if q.device.type != "cuda" or not _device(q.device)[0]:
            return None
        try:
            from attention import hopper
        except ImportError:  # Gluon or its Hopper ops missing from this Triton: the default must still run
            return None
        return hopper.auto_variant(q)
    return variant


def _flash2_fwd(q, k, v, seed, causal, dropout_p, scale, window, doc_start, doc_end, blocks_kv, blocks_q, block):
    """doc_start, doc_end: (B, N_k) int32, each key position's document bounds, or None;
    blocks_kv, blocks_q: a BlockMask's lists (attention/masks.py) of tiles of `block`, or None."""
    variant = _gluon_variant(q) if not (window or dropout_p) and doc_start is None and blocks_kv is None else None
    if variant:
        from attention import hopper
        if hopper.supported(q, k, v) is None:
            return hopper.forward(q, k, v, causal, scale, variant)
    B, N_q, H, D = q.shape
    N_k = k.shape[1]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, N_q, device=q.device, dtype=torch.float32)
    *docs, lists, stride_blh, stride_blr, n_blocks = _mask_args(seed, doc_start, doc_end, blocks_kv, H)
    _launch("fwd", D, N_q, "B_r", B * H,
            (q, k, v, o, lse, seed, *docs, lists,
             *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], stride_blh, stride_blr,
             H, bucket(B * H), bucket(N_q), bucket(N_k), N_q, N_k, scale * LOG2E, dropout_p, window, n_blocks),
            dict(CAUSAL=causal, WINDOW=window > 0, DOC=doc_start is not None, SPARSE=blocks_kv is not None,
                 DROPOUT=dropout_p > 0, D=D, G=block),
            _signature(window, q, k, v, seed, *(t for t in (doc_start, doc_end, blocks_kv) if t is not None)))
    return o, lse


def _flash2_bwd(do, q, k, v, o, lse, dlse, seed, causal, dropout_p, scale, window, doc_start, doc_end,
                blocks_kv, blocks_q, block, dq, dk, dv):
    """Writes dQ, dK, dV into dq, dk, dv (contiguous in head_dim; e.g. views of one packed gradient)."""
    do = do if do.stride(-1) == 1 else do.contiguous()
    if options["gluon_backward"] and not (window or dropout_p) and doc_start is None and blocks_kv is None \
            and dlse is None:
        from attention import hopper  # imports Gluon, which older Tritons lack: only when asked for
        if hopper.supported(q, k, v) is None and hopper.supported_backward(q, do, dk, dv) is None:
            return hopper.backward(do, q, k, v, o, lse, causal, scale, dq, dk, dv,
                                   dq_add="auto" if options["gluon_backward"] is True else options["gluon_backward"])
    B, N_q, H, D = q.shape
    N_k = k.shape[1]
    dlse = None if dlse is None else dlse.contiguous()  # autograd may hand an expanded tensor
    delta = torch.empty_like(lse)
    args = (q, k, v, do)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    scalars = (H, bucket(B * H), bucket(N_q), bucket(N_k), N_q, N_k, scale * LOG2E, scale, dropout_p, window)
    common = dict(CAUSAL=causal, WINDOW=window > 0, DOC=doc_start is not None, SPARSE=blocks_kv is not None,
                  DROPOUT=dropout_p > 0)
    signature = _signature(window, q, k, v, do, seed, *(() if dlse is None else (dlse,)), dq, dk, dv,
                           *(t for t in (doc_start, doc_end, blocks_kv, blocks_q) if t is not None))
    # dQ first: its prologue writes D, which the dK/dV kernel reads. (Unused pointers are real ones.)
    *docs, lists, stride_blh, stride_blr, n_blocks = _mask_args(seed, doc_start, doc_end, blocks_kv, H)
    _launch("dq", D, N_q, "B_r", B * H,
            (*args, dq, lse, delta, seed, o, lse if dlse is None else dlse, *docs, lists,
             *strides, *dq.stride()[:3], *o.stride()[:3], stride_blh, stride_blr, *scalars, n_blocks),
            dict(**common, HAS_DLSE=dlse is not None, D=D, G=block), signature)
    *docs, lists, stride_blh, stride_blr, n_blocks = _mask_args(seed, doc_start, doc_end, blocks_q, H)
    _launch("dkdv", D, N_k, "B_c", B * H,
            (*args, dk, dv, lse, delta, seed, *docs, lists,
             *strides, *dk.stride()[:3], *dv.stride()[:3], stride_blh, stride_blr, *scalars, n_blocks),
            dict(**common, D=D, G=block), signature)


# --------------------------------------------------------------------------------------------
# torch ops: one forward and one backward, for separate q, k, v and for packed qkv
# --------------------------------------------------------------------------------------------
# `tensors` is [q, k, v] or [qkv]: qkv (B, N, 3, H, d) as the fused projection yields it
# (flash-attn's qkvpacked). The forward reads Q, K, V as strided views of it, and the backward
# writes dQ, dK, dV into one packed gradient: with three separate gradients, autograd would
# stack them back into the projection's layout, a copy of the whole dQKV per layer.
def _qkv(tensors):
    return tensors[0].unbind(2) if len(tensors) == 1 else tensors


def _contiguous_rows(tensors):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]  # whatever layout a compiler hands over


def _forward(tensors, seed, causal, dropout_p, scale, *masks):
    return _flash2_fwd(*_qkv(_contiguous_rows(tensors)), seed, causal, dropout_p, scale, *masks)


def _backward(do, tensors, o, lse, dlse, seed, causal, dropout_p, scale, *masks):
    tensors = _contiguous_rows(tensors)
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
    _flash2_bwd(do, *_qkv(tensors), o, lse, dlse, seed, causal, dropout_p, scale, *masks, *_qkv(grads))
    return grads


# Two routes to the same two functions. torch.compile sees opaque custom ops with registered
# shapes and autograd (traced through, no graph break; our launch path runs them); eager calls
# take a plain autograd.Function, because the custom-op dispatcher costs more host time per
# call than the kernels take at GPT-2 sizes (benchmarks/results/h100/notes.md).
@torch.library.custom_op("gpt2flash::flash2_fwd", mutates_args=())
def flash2_fwd(tensors: list[torch.Tensor], seed: torch.Tensor, causal: bool, dropout_p: float,
               scale: float, window: int, doc_start: torch.Tensor | None, doc_end: torch.Tensor | None,
               blocks_kv: torch.Tensor | None, blocks_q: torch.Tensor | None,
               block: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(tensors, seed, causal, dropout_p, scale, window, doc_start, doc_end, blocks_kv, blocks_q, block)


@flash2_fwd.register_fake
def _(tensors, seed, causal, dropout_p, scale, *masks):
    B, N, H, D = _qkv(tensors)[0].shape
    return tensors[0].new_empty(B, N, H, D), tensors[0].new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("gpt2flash::flash2_bwd", mutates_args=())
def flash2_bwd(do: torch.Tensor, tensors: list[torch.Tensor], o: torch.Tensor, lse: torch.Tensor,
               dlse: torch.Tensor | None, seed: torch.Tensor, causal: bool, dropout_p: float,
               scale: float, window: int, doc_start: torch.Tensor | None, doc_end: torch.Tensor | None,
               blocks_kv: torch.Tensor | None, blocks_q: torch.Tensor | None, block: int) -> list[torch.Tensor]:
    return _backward(do, tensors, o, lse, dlse, seed, causal, dropout_p, scale, window, doc_start, doc_end,
                     blocks_kv, blocks_q, block)


@flash2_bwd.register_fake
def _(do, tensors, o, lse, dlse, seed, causal, dropout_p, scale, *masks):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]


N_ARGS = 10  # beside the tensors: seed, causal, dropout_p, scale, window, doc_start, doc_end, blocks_kv, blocks_q, block


def _setup_context(ctx, inputs, output):
    tensors, seed, causal, dropout_p, scale, window, *masks, block = inputs
    ctx.present = [m is not None for m in masks]  # save_for_backward takes tensors only
    ctx.save_for_backward(*tensors, *output, seed, *(m for m in masks if m is not None))
    ctx.causal, ctx.dropout_p, ctx.scale, ctx.window, ctx.block = causal, dropout_p, scale, window, block


def _grads(ctx, do, dlse, bwd):
    """The gradients of `tensors` through `bwd` (the op or the function)."""
    saved = list(ctx.saved_tensors)
    n = sum(ctx.present)
    given = iter(saved[len(saved) - n:])
    masks = [next(given) if present else None for present in ctx.present]
    *tensors, o, lse, seed = saved[:len(saved) - n]
    do = torch.zeros_like(o) if do is None else do  # only LSE was used
    return bwd(do, tensors, o, lse, dlse, seed, ctx.causal, ctx.dropout_p, ctx.scale, ctx.window, *masks, ctx.block)


flash2_fwd.register_autograd(lambda ctx, do, dlse: (_grads(ctx, do, dlse, flash2_bwd), *[None] * N_ARGS),
                             setup_context=_setup_context)


class _Flash2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, seed, causal, dropout_p, scale, window, doc_start, doc_end, blocks_kv, blocks_q, block, *tensors):
        ctx.set_materialize_grads(False)  # an unused LSE brings no zero-filled gradient
        masks = (window, doc_start, doc_end, blocks_kv, blocks_q, block)
        output = _forward(tensors, seed, causal, dropout_p, scale, *masks)
        _setup_context(ctx, (tensors, seed, causal, dropout_p, scale, *masks), output)
        return output

    @staticmethod
    def backward(ctx, do, dlse):
        return *[None] * N_ARGS, *_grads(ctx, do, dlse, _backward)


_ZERO_SEEDS = {}  # a dict, not functools.cache: torch.compile traces through dict lookups silently


def zero_seed(device):
    """A cached int64 zero (the seed argument when dropout is off: no allocation per call)."""
    if device not in _ZERO_SEEDS:
        _ZERO_SEEDS[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return _ZERO_SEEDS[device]


def prepare_inputs(q, k, v, scale, seed, dropout_p, backend, head_dims):
    """Shared by our kernels' entry points: validate, make head_dim contiguous, default the
    softmax scale to 1/sqrt(d) and the seed to a fresh draw (or the cached zero without dropout)."""
    check_qkv(q, k, v, backend, head_dims, need_gpu=not INTERPRET)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if seed is None:
        seed = new_seed(q.device) if dropout_p > 0 else zero_seed(q.device)
    return q, k, v, scale, seed


def _window(window, causal):
    """The window as the kernels take it (0: none), or one clear error."""
    if window is None:
        return 0
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"flash: window must be a whole number >= 1 (each query sees its last `window` keys); got {window!r}")
    if not causal:
        raise ValueError("flash: a sliding window is causal (each query sees its last `window` keys): pass causal=True")
    return window


def _documents(documents, n_q, n_k):
    """(doc_start, doc_end) as the kernels take them: int32 (B, N_k), contiguous; or one clear error."""
    if documents is None:
        return None, None
    start, end = documents
    if start.shape != end.shape or start.dim() != 2 or start.shape[1] != n_k:
        raise ValueError(f"flash: documents must be (start, end) of shape (batch, N_k={n_k}), from "
                         f"attention.document_bounds(doc_ids); got {tuple(start.shape)} and {tuple(end.shape)}")
    if n_q > n_k:
        raise ValueError(f"flash: with documents the queries are the last N_q of the N_k key positions; "
                         f"got N_q={n_q} > N_k={n_k}")
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def _blocks(block_mask, tensors, causal, window, documents):
    """(blocks_kv, blocks_q, block) as the kernels take them (None, None, 16 without a block
    mask), or one clear error."""
    if block_mask is None:
        return None, None, 16
    q, k, _ = _qkv(tensors)
    if window is not None or documents is not None:
        raise ValueError("flash: a block mask does not combine with a window or documents here; "
                         "fold them into its layout (attention.masks.block_mask)")
    if (block_mask.n_q, block_mask.n_k, block_mask.causal) != (q.shape[1], k.shape[1], bool(causal)):
        raise ValueError(f"flash: the block mask is for N_q={block_mask.n_q}, N_k={block_mask.n_k}, "
                         f"causal={block_mask.causal}; this call has {q.shape[1]}, {k.shape[1]}, {bool(causal)}")
    if block_mask.layout.shape[0] not in (1, q.shape[2]):
        raise ValueError(f"flash: the block mask has {block_mask.layout.shape[0]} heads; the call {q.shape[2]}")
    tile = 16 if INTERPRET else 128  # every tile the launch may pick divides it
    if block_mask.block % tile:
        raise ValueError(f"flash: the block mask's blocks must be a multiple of {tile} here; got {block_mask.block}")
    return block_mask.kv.to(q.device), block_mask.q.to(q.device), block_mask.block


def _attention(tensors, causal, dropout_p, scale, seed, return_lse, window, documents, block_mask):
    # N_q, N_k only for documents: no extra views of the inputs on the plain path
    n_q, n_k = (t.shape[1] for t in _qkv(tensors)[:2]) if documents is not None else (None, None)
    args = (seed, bool(causal), float(dropout_p), scale, _window(window, causal), *_documents(documents, n_q, n_k),
            *_blocks(block_mask, tensors, causal, window, documents))
    o, lse = flash2_fwd(tensors, *args) if torch.compiler.is_compiling() else _Flash2.apply(*args, *tensors)
    return (o, lse) if return_lse else o


def flash_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, return_lse=False, seed=None, window=None,
                    documents=None, block_mask=None):
    """FlashAttention-2. q: (B, N_q, H, d), k and v: (B, N_k, H, d), fp16 or bf16, d in
    {16, 32, 64, 128, 256}. Returns O (B, N_q, H, d), and LSE (B, H, N_q) fp32 when
    return_lse (differentiable too). `seed` (an int64 tensor of one element) fixes the dropout
    mask; by default a fresh one is drawn from torch's generator. `window` (with causal): each
    query sees only its last `window` keys, itself included (sliding-window attention).
    `documents`: (start, end) of each key position's document, (B, N_k), from
    attention.document_bounds(doc_ids): a query sees only the keys of its own document, causally
    or (without causal) all of them: packed sequences; key padding (the padding one document of
    its own, attention.masks.padding_documents). Blocks wholly outside every row's window or document are skipped.
    `block_mask` (attention.masks.block_mask): block-sparse attention, only its tiles computed."""
    q, k, v, scale, seed = prepare_inputs(q, k, v, scale, seed, dropout_p, "flash", SUPPORTED_HEAD_DIMS)
    return _attention([q, k, v], causal, dropout_p, scale, seed, return_lse, window, documents, block_mask)


def flash_attention_qkvpacked(qkv, causal=False, dropout_p=0.0, scale=None, return_lse=False, seed=None,
                              window=None, documents=None, block_mask=None):
    """flash_attention on packed inputs: qkv (B, N, 3, H, d), the fused QKV projection's output
    viewed so, whose gradient comes back packed the same way (no stacking copy)."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"flash: packed qkv must be (batch, seq, 3, heads, head_dim); got {tuple(qkv.shape)}")
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    *_, scale, seed = prepare_inputs(*qkv.unbind(2), scale, seed, dropout_p, "flash", SUPPORTED_HEAD_DIMS)
    return _attention([qkv], causal, dropout_p, scale, seed, return_lse, window, documents, block_mask)


configure()
