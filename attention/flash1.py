"""FlashAttention-1 in Triton (Dao et al. 2022, Algorithms 1, 2 and 4), kept as a baseline.

The loop order is the paper's: the OUTER loop runs over K/V blocks j and the INNER loop over
Q blocks i, so the running statistics cannot stay in registers. For every (i, j) pair the
kernel reads O_i, l_i, m_i from HBM, updates them and writes them back:

    m_new = max(m_i, rowmax(S_ij)),   P~_ij = exp(S_ij - m_new),
    l_new = exp(m_i - m_new) l_i + rowsum(P~_ij),
    O_i   = (exp(m_i - m_new) l_i O_i + dropout(P~_ij) V_j) / l_new

(the paper's m~/l~ per-tile statistics folded into m_new, which is the same arithmetic).
The backward pass (Algorithm 4) likewise accumulates dQ_i in HBM inside the inner loop,
while dK_j, dV_j live in registers. One program per (batch, head) walks all blocks in order:
that is FA1's parallelism (batch x heads only), which FA2 improves on by also splitting the
sequence; at long N with a small batch few programs run and the GPU idles. The benchmarks
show exactly that gap.

Same conventions as `attention.flash`: (batch, seq, heads, head_dim) layout, bottom-right
causal alignment, Philox dropout keyed per element (the same masks as FA2 for a given seed).
"""

import torch
import triton
import triton.language as tl

from attention.flash import INTERPRET, LOG2E, _fp32, _row_delta, dropout_keep, prepare_inputs

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


@triton.jit
def _tile_scores(q, kT, rows, cols, N_Q, N_K, shift, qk_scale, CAUSAL: tl.constexpr):
    """S_ij in log2 units with out-of-range and (if causal) future keys at -inf."""
    s = tl.dot(q, kT) * qk_scale
    valid = cols[None, :] < N_K
    if CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None] + shift)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _first_row_block(j, shift, B_r: tl.constexpr, B_c: tl.constexpr, CAUSAL: tl.constexpr):
    """First query block that sees any key of K block j."""
    if CAUSAL:
        return tl.maximum(j * B_c - shift, 0) // B_r * B_r
    return 0


@triton.jit
def bwd_delta_kernel(O, dO, dLSE, Delta, stride_ob, stride_on, stride_oh, stride_dob, stride_don, stride_doh,
                     H, N_Q, HAS_DLSE: tl.constexpr, D: tl.constexpr, B_r: tl.constexpr):
    """D_i = rowsum(dO_i * O_i) as a pass of its own before the backward (FA2's dQ kernel
    computes it in its prologue instead)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * B_r + tl.arange(0, B_r)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < N_Q
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(dO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    tl.store(Delta + bh * N_Q + offs_m, _row_delta(o, do, dLSE + bh * N_Q, offs_m, row_ok, HAS_DLSE), mask=row_ok)


@triton.jit
def flash1_fwd_kernel(Q, K, V, O, L, M, seed_ptr,
                      stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,
                      stride_vb, stride_vn, stride_vh, stride_ob, stride_on, stride_oh,
                      H, N_Q, N_K, qk_scale, dropout_p,
                      CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, D: tl.constexpr,
                      B_r: tl.constexpr, B_c: tl.constexpr):
    """O (fp32 workspace), L, M are pre-set to 0, 0, -inf and updated in place."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    qk_scale, dropout_p = _fp32(qk_scale), _fp32(dropout_p)
    offs_d = tl.arange(0, D)
    seed = tl.load(seed_ptr)
    shift = N_K - N_Q
    for start_n in range(0, N_K, B_c):  # outer loop: K_j, V_j into SRAM
        cols = start_n + tl.arange(0, B_c)
        kT = tl.load(K + b * stride_kb + h * stride_kh + cols[None, :] * stride_kn + offs_d[:, None],
                     mask=cols[None, :] < N_K, other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :],
                    mask=cols[:, None] < N_K, other=0.0)
        for start_m in range(_first_row_block(start_n // B_c, shift, B_r, B_c, CAUSAL), N_Q, B_r):
            rows = start_m + tl.arange(0, B_r)
            row_ok = rows < N_Q
            o_ptrs = O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :]
            q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
                        mask=row_ok[:, None], other=0.0)
            o = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0)
            l_i = tl.load(L + bh * N_Q + rows, mask=row_ok, other=0.0)
            m_i = tl.load(M + bh * N_Q + rows, mask=row_ok, other=float("-inf"))
            s = _tile_scores(q, kT, rows, cols, N_Q, N_K, shift, qk_scale, CAUSAL)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see no key yet
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_new = alpha * l_i + tl.sum(p, 1)
            if DROPOUT:
                keep = dropout_keep(seed, bh, rows, start_n, N_Q, N_K, dropout_p, B_c)
                p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
            pv = tl.dot(p.to(v.dtype), v)
            l_safe = tl.where(l_new == 0.0, 1.0, l_new)
            o = ((alpha * l_i)[:, None] * o + pv) / l_safe[:, None]
            tl.store(o_ptrs, o, mask=row_ok[:, None])
            tl.store(L + bh * N_Q + rows, l_new, mask=row_ok)
            tl.store(M + bh * N_Q + rows, m_new, mask=row_ok)
            tl.debug_barrier()  # the next j re-reads these rows, possibly from other threads


@triton.jit
def flash1_bwd_kernel(Q, K, V, dO, dQ, dK, dV, L, M, Delta, seed_ptr,
                      stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,
                      stride_vb, stride_vn, stride_vh, stride_dob, stride_don, stride_doh,
                      stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                      H, N_Q, N_K, qk_scale, sm_scale, dropout_p,
                      CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, D: tl.constexpr,
                      B_r: tl.constexpr, B_c: tl.constexpr):
    """Algorithm 4. dQ is an fp32 (B, N_q, H, d) workspace pre-set to 0, updated in place."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    qk_scale, sm_scale, dropout_p = _fp32(qk_scale), _fp32(sm_scale), _fp32(dropout_p)
    offs_d = tl.arange(0, D)
    seed = tl.load(seed_ptr)
    shift = N_K - N_Q
    for start_n in range(0, N_K, B_c):
        cols = start_n + tl.arange(0, B_c)
        col_ok = cols[:, None] < N_K
        k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :], mask=col_ok, other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :], mask=col_ok, other=0.0)
        dk = tl.zeros([B_c, D], dtype=tl.float32)
        dv = tl.zeros([B_c, D], dtype=tl.float32)
        for start_m in range(_first_row_block(start_n // B_c, shift, B_r, B_c, CAUSAL), N_Q, B_r):
            rows = start_m + tl.arange(0, B_r)
            row_ok = rows < N_Q
            q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            do = tl.load(dO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            l_i = tl.load(L + bh * N_Q + rows, mask=row_ok, other=1.0)
            m_i = tl.load(M + bh * N_Q + rows, mask=row_ok, other=0.0)
            delta = tl.load(Delta + bh * N_Q + rows, mask=row_ok, other=0.0)
            s = _tile_scores(q, tl.trans(k), rows, cols, N_Q, N_K, shift, qk_scale, CAUSAL)
            p = tl.math.exp2(s - m_i[:, None]) / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            dp = tl.dot(do, tl.trans(v))
            if DROPOUT:
                keep = dropout_keep(seed, bh, rows, start_n, N_Q, N_K, dropout_p, B_c)
                dv += tl.dot(tl.trans(tl.where(keep, p / (1.0 - dropout_p), 0.0).to(do.dtype)), do)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            else:
                dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            ds = p * (dp - delta[:, None])
            dq_ptrs = dQ + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :]
            dq = tl.load(dq_ptrs, mask=row_ok[:, None], other=0.0)
            tl.store(dq_ptrs, dq + sm_scale * tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
            tl.debug_barrier()  # dQ_i is read again for the next j
        tl.store(dK + b * stride_dkb + h * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :],
                 (dk * sm_scale).to(dK.dtype.element_ty), mask=col_ok)
        tl.store(dV + b * stride_dvb + h * stride_dvh + cols[:, None] * stride_dvn + offs_d[None, :],
                 dv.to(dV.dtype.element_ty), mask=col_ok)


def _blocks(d):
    if INTERPRET:
        return dict(B_r=16, B_c=16)
    return dict(B_r=64, B_c=64, num_warps=4) if d <= 64 else dict(B_r=64, B_c=32, num_warps=4)


@torch.library.triton_op("gpt2flash::flash1_fwd", mutates_args={})
def flash1_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: torch.Tensor, causal: bool,
               dropout_p: float, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N_q, H, D = q.shape
    o32 = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    l = torch.zeros(B, H, N_q, device=q.device, dtype=torch.float32)
    m = torch.full((B, H, N_q), float("-inf"), device=q.device, dtype=torch.float32)
    torch.library.wrap_triton(flash1_fwd_kernel)[(B * H,)](
        q, k, v, o32, l, m, seed, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o32.stride()[:3],
        H, N_q, k.shape[1], scale * LOG2E, dropout_p,
        CAUSAL=causal, DROPOUT=dropout_p > 0, D=D, **_blocks(D))
    return o32.to(q.dtype), l, m


@torch.library.triton_op("gpt2flash::flash1_bwd", mutates_args={})
def flash1_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
               l: torch.Tensor, m: torch.Tensor, seed: torch.Tensor, causal: bool, dropout_p: float,
               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N_q, H, D = q.shape
    q, do = q.contiguous(), do.contiguous()  # dQ's fp32 workspace shares q's strides
    dq32 = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(l)
    torch.library.wrap_triton(bwd_delta_kernel)[(triton.cdiv(N_q, 64), B * H)](
        o, do, l, delta, *o.stride()[:3], *do.stride()[:3], H, N_q, HAS_DLSE=False, D=D, B_r=64)
    torch.library.wrap_triton(flash1_bwd_kernel)[(B * H,)](
        q, k, v, do, dq32, dk, dv, l, m, delta, seed,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        H, N_q, k.shape[1], scale * LOG2E, scale, dropout_p,
        CAUSAL=causal, DROPOUT=dropout_p > 0, D=D, **_blocks(D))
    return dq32.to(q.dtype), dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v, seed, causal, dropout_p, scale = inputs
    o, l, m = output
    ctx.save_for_backward(q, k, v, o, l, m, seed)
    ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale


def _backward(ctx, do, _dl, _dm):
    q, k, v, o, l, m, seed = ctx.saved_tensors
    dq, dk, dv = flash1_bwd(do, q, k, v, o, l, m, seed, ctx.causal, ctx.dropout_p, ctx.scale)
    return dq, dk, dv, None, None, None, None


flash1_fwd.register_autograd(_backward, setup_context=_setup_context)


def flash1_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, seed=None):
    """FlashAttention-1 (paper loop order). Same arguments and layout as flash_attention."""
    q, k, v, scale, seed = prepare_inputs(q, k, v, scale, seed, dropout_p, "flash1", SUPPORTED_HEAD_DIMS)
    return flash1_fwd(q, k, v, seed, bool(causal), float(dropout_p), scale)[0]
