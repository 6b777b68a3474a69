"""FlashAttention on Hopper, written in Gluon (Triton's lower level): the forward in four
variants and a one-kernel backward, issue 25's first steps. flash.py's default
(`attention.options.gluon=auto`) runs the ping-pong forward at the shapes AUTO names, where it was
measured faster, and its portable kernels elsewhere. Any variant is taken with
`attention.options.gluon=plain|overlap|specialized|pingpong` (FLASH_GLUON=1: plain) where
`supported` allows, the backward with `gluon_backward=true` (off by default), and
`benchmarks.bench_attention --providers flash-gluon,flash-gluon-overlap,flash-gluon-specialized,
flash-gluon-pingpong` measures them beside our portable kernel (attention/flash.py) and SDPA's.
Compiled for sm90 in CPU tests; on the GPU every variant matches the reference. On an H200 none of
plain, overlap and specialized is faster than flash.py's forward across the board
(benchmarks/results/h200/attention/gluon-forward); ping-pong is, at d=128
(benchmarks/results/h200/attention/gluon, benchmarks/results/h100/attention/gluon-auto).

The algorithm is flash.py's forward (FlashAttention-2, Algorithm 1 of the FA2 paper):

    for each query tile Q_i (B_r rows), kept in shared memory:
        m = -inf, l = 0, O = 0
        for each key tile K_j, V_j (B_c rows) it may see:
            S = s Q_i K_j^T                    (one warpgroup MMA, fp32 accumulator)
            m' = max(m, rowmax(S)),  P = exp(S - m'),  l = exp(m - m') l + rowsum(P)
            O = exp(m - m') O + P V_j          (P from registers, V_j from shared memory)
            m = m'
        O_i = O / l,   LSE_i = m + log l

What Gluon adds over flash.py, and where each FlashAttention-3 technique sits (FA3, Shah et
al. 2024, Section 3):
- TMA: Q_i, K_j and V_j arrive through tensor-memory-accelerator copies, signalled on
  mbarriers; O_i leaves through one.
- Rings of STAGES K and V buffers: copies run ahead of the tile being computed on, so loads
  overlap the matmuls.
- wgmma (`warpgroup_mma`): S and P V are asynchronous warpgroup MMAs reading K_j and V_j from
  shared memory; P is passed from registers, as in FA3.
- The `overlap` variant: FA3's intra-warpgroup pipelining (its Algorithm 2), the softmax of
  tile j computed while the wgmma of P_{j-1} V_{j-1} runs. The `plain` variant waits for each
  wgmma before the next step: the two measure what the overlap is worth.
- The `specialized` variant: FA3's warp specialization (its Section 3.1), a producer warp that
  only issues the TMA copies as buffers free up, beside the consumer warps running the
  overlap schedule (registers reallocated between them by `gl.warp_specialize`).
- The `pingpong` variant: FA3's inter-warpgroup overlap (its Section 3.1, "pingpong
  scheduling"). Two consumer warpgroups, each on 64 of the 128 query rows with the overlap
  schedule, and the producer warp; a warpgroup issues a step's wgmmas only after the other has
  issued its own (`_turn` / `_pass`, mbarriers handed back and forth), so one warpgroup's softmax
  runs while the other's matmuls do. In the other variants the two warpgroups of the 8 warps work
  as one on a 128-row tile.
- The backward in one kernel (`fa3_bwd_kernel`, launch option `gluon_backward`): dK and dV
  in registers, five matmuls a tile pair (FA3's Section 3.1 applied to FA2's backward), dQ
  accumulated in fp32 by atomics from registers or as FA3 does it, each dQ_i staged in one of two
  shared-memory buffers and added by one TMA reduce-add, which runs while the next tile computes;
  DQ_BY_TMA says where the second was measured faster (`gluon_backward=atomics|tma` forces one).
  `BWD_OVERLAP` (off until measured) orders a step as FA3's backward does, its exponentials,
  dS^T and dQ_i's adds each under a wgmma, with dQ_i in column halves at d=128 (registers).
  No warp specialization in it yet.

Supported: bf16 / fp16, head dim 64 or 128, N_q = N_k a multiple of 128, causal or not,
no dropout and no masks; `supported` says so for a given call. The layout is flash.py's, (B, N,
H, d), including views of packed QKV: each of Q, K, V, O is seen as a (B N) x (H d) matrix,
whose [B_r, d] tile at (b N + i B_r, h d) is head h's tile i.
"""

import functools
import math

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton._C.libtriton import ir
from triton.experimental.gluon.language._core import builtin
from triton.runtime.jit import constexpr_function

from attention import flash
from attention.flash import _row_delta

# TMA copies: Triton 3.6 (the GPU image's) names them async_copy_global_to_shared /
# async_copy_shared_to_global, later Tritons async_load / async_store.
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# A CTA-wide barrier (bar.sync): `thread_barrier` in Triton 3.6, `barrier` later.
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier


@builtin
def _tma_add(desc, coord, src, _semantic=None):
    """TMA's reduce-add (cp.reduce.async.bulk.tensor .add): a shared-memory tile added into global
    memory by the copy engine, asynchronously. Later Tritons name it tma.async_atomic_add; Triton
    3.6's Gluon builds the op (create_async_tma_reduce) but names no function for it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, coord, src.handle)


tma_add = getattr(tma, "async_atomic_add", None) or _tma_add

HEAD_DIMS = (64, 128)
DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
# Per variant and head dim: the tiles (B_r query rows over 8 warps, two warpgroups of 64 rows),
# the key/value rings' depth, and the warps. The overlap variant keeps two S-sized tiles
# live (S_j and P_{j-1}), hence B_c = 64 at d = 128.
VARIANTS = ("plain", "overlap", "specialized", "pingpong")  # the first, the fastest measured, is the default
TILES = {"plain": {64: dict(B_r=128, B_c=128, STAGES=3, num_warps=8), 128: dict(B_r=128, B_c=128, STAGES=2, num_warps=8)},
         "overlap": {64: dict(B_r=128, B_c=128, STAGES=2, num_warps=8), 128: dict(B_r=128, B_c=64, STAGES=3, num_warps=8)}}
TILES["specialized"] = TILES["overlap"]
# Ping-pong: two consumer warpgroups of 4 warps, 64 query rows each (B_r = 128 a program), so a
# thread holds an S tile of B_c = 128 at d = 128 as well.
TILES["pingpong"] = {64: dict(B_r=128, B_c=128, STAGES=2, num_warps=4, GROUPS=2),
                     128: dict(B_r=128, B_c=128, STAGES=2, num_warps=4, GROUPS=2)}
# What flash's `gluon=auto` (the default) runs, by head dim: (variant, the shortest N it applies
# from). Chosen from two H200 runs compared through their TFLOP/s (attention/gluon, and
# gluon-forward for flash.py's autotuned forward), then checked side by side in one run on an
# H100 (benchmarks/results/h100/attention/gluon-auto). A head dim not named keeps the portable
# forward, where no variant won at every shape.
AUTO = {128: ("pingpong", 2048)}
LOG2E = 1.0 / math.log(2.0)
PINGPONG_REGS = gl.constexpr(240)  # registers a thread of the second consumer warpgroup asks for (setmaxnreg)


@constexpr_function
def mma_layout(num_warps, n):
    """A wgmma accumulator's layout: warps stacked along the rows (16 rows a warp), one
    instruction spanning the tile's n columns (B_c for S, d for O); k = 16 for 16-bit inputs."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@constexpr_function
def p_layout(O_layout):
    """P as wgmma's A operand, from registers, for the P V product into O's accumulator."""
    return gl.DotOperandLayout(operand_index=0, parent=O_layout, k_width=2)


@gluon.jit
def _online_softmax(S, m_i, l_i, rows, first, j, qk_scale, B_c: gl.constexpr, CAUSAL: gl.constexpr):
    """Tile j's scores S (fp32, unscaled) into P = exp(S - m'), with the running max m and sum l
    updated; alpha = exp(m - m') rescales what O holds. Base 2 throughout (qk_scale = s log2 e).
    rows: the query rows of S, the first of them `first`."""
    S = S * qk_scale
    if CAUSAL:
        if (j + 1) * B_c > first:  # a tile on the diagonal: mask the keys after each query
            cols = j * B_c + gl.arange(0, B_c, layout=gl.SliceLayout(0, S.type.layout))
            S = gl.where(gl.expand_dims(rows, 1) >= gl.expand_dims(cols, 0), S, -float("inf"))
    m_new = gl.maximum(m_i, gl.max(S, axis=1))  # finite: every row sees key 0
    alpha = gl.exp2(m_i - m_new)
    P = gl.exp2(S - gl.expand_dims(m_new, 1))
    return P, m_new, l_i * alpha + gl.sum(P, axis=1), alpha


@gluon.jit
def _epilogue(acc, m_i, l_i, rows, O_desc, O_smem, LSE, bh, N, row, col):
    """O_i = O / l out through TMA (O_smem: a free [B_r, d] buffer), LSE_i = m + log l in
    natural log, as flash.py's backward reads it (m is in base-2 units)."""
    O = acc / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, acc.type.layout)), 1)
    O_smem.store(O.to(O_desc.dtype))
    fence_async_shared()
    tma_store(O_desc, [row, col], O_smem)
    gl.store(LSE + bh * N + rows, (m_i + gl.log2(l_i)) * 0.6931471805599453)
    tma.store_wait(pendings=0)


@gluon.jit
def _load(desc, row, col, bar, buffer, ok):
    """One tile through TMA into `buffer`, signalled on `bar` (nothing when not ok)."""
    mbarrier.expect(bar, desc.block_type.nbytes, pred=ok)
    tma_load(desc, [row, col], bar, buffer, pred=ok)


@gluon.jit
def _release(desc, row, col, ready, free, buffer, ok, SPECIALIZED: gl.constexpr):
    """A K or V buffer the consumer is done with: under warp specialization, tell the producer
    warp (`free`); otherwise issue the copy of the tile STAGES ahead into it ourselves."""
    if SPECIALIZED:
        mbarrier.arrive(free, count=1)
    else:
        _load(desc, row, col, ready, buffer, ok)


@gluon.jit
def _turn(mine, e, PINGPONG: gl.constexpr):
    """FA3's ping-pong (its Section 3.1, inter-warpgroup overlap), the half before issuing the
    wgmmas of step e: wait until the other warpgroup has issued its step e - 1 (warpgroup 0) or
    e (warpgroup 1); `_pass` after issuing hands the tensor cores over. So one warpgroup's
    softmax runs while the other's matmuls do. Only an order: the results do not depend on it."""
    if PINGPONG:
        mbarrier.wait(mine, e & 1)


@gluon.jit
def _pass(theirs, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(theirs, count=1)


@gluon.jit
def _overlap_consumer(Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, K_desc, V_desc, row0, col, first,
                      n_tiles, qk_scale, CAUSAL: gl.constexpr, SPECIALIZED: gl.constexpr, mine, theirs,
                      PINGPONG: gl.constexpr):
    """FA3's intra-warpgroup overlap (its Algorithm 2): S_j = Q K_j^T and O += P_{j-1} V_{j-1}
    are issued together; the softmax of S_j runs while the P V wgmma does, and O is rescaled by
    alpha_j once that is done. Tile 0's S and softmax come first. Q_smem: this consumer's query
    rows, from `first`. Under PINGPONG, each step's wgmmas wait for this warpgroup's turn
    (mine) and hand it on (theirs) once issued. Returns O (unnormalized), m, l."""
    B_r: gl.constexpr = Q_smem.type.shape[0]
    STAGES: gl.constexpr = K_smem.type.shape[0]
    B_c: gl.constexpr = K_smem.type.shape[1]
    D: gl.constexpr = K_smem.type.shape[2]
    dtype: gl.constexpr = K_smem.dtype
    S_layout: gl.constexpr = mma_layout(gl.num_warps(), B_c)
    O_layout: gl.constexpr = mma_layout(gl.num_warps(), D)
    P_layout: gl.constexpr = p_layout(O_layout)
    row_S: gl.constexpr = gl.SliceLayout(1, S_layout)
    rows = first + gl.arange(0, B_r, layout=row_S)
    S_zero = gl.zeros([B_r, B_c], gl.float32, S_layout)
    acc = gl.zeros([B_r, D], gl.float32, layout=O_layout)

    mbarrier.wait(Q_bar, 0)
    mbarrier.wait(K_bar.index(0), 0)
    _turn(mine, 0, PINGPONG)
    S = warpgroup_mma(Q_smem, K_smem.index(0).permute((1, 0)), S_zero, use_acc=False, is_async=True)
    _pass(theirs, PINGPONG)
    S = warpgroup_mma_wait(num_outstanding=0, deps=(S, ))
    _release(K_desc, row0 + STAGES * B_c, col, K_bar.index(0), K_free.index(0), K_smem.index(0), STAGES < n_tiles,
             SPECIALIZED)
    P, m_i, l_i, alpha = _online_softmax(S, gl.full([B_r], -float("inf"), gl.float32, layout=row_S),
                                         gl.zeros([B_r], gl.float32, layout=row_S), rows, first, 0, qk_scale, B_c,
                                         CAUSAL)
    for j in range(1, n_tiles):
        s = j % STAGES
        sp = (j - 1) % STAGES
        mbarrier.wait(K_bar.index(s), (j // STAGES) & 1)
        _turn(mine, j, PINGPONG)
        S = warpgroup_mma(Q_smem, K_smem.index(s).permute((1, 0)), S_zero, use_acc=False, is_async=True)
        mbarrier.wait(V_bar.index(sp), ((j - 1) // STAGES) & 1)
        P_op = gl.convert_layout(P.to(dtype), P_layout)
        acc = warpgroup_mma(P_op, V_smem.index(sp), acc, is_async=True)
        _pass(theirs, PINGPONG)
        S = warpgroup_mma_wait(num_outstanding=1, deps=(S, ))  # S_j done; the P V wgmma may still run
        _release(K_desc, row0 + (j + STAGES) * B_c, col, K_bar.index(s), K_free.index(s), K_smem.index(s),
                 j + STAGES < n_tiles, SPECIALIZED)
        P, m_i, l_i, alpha = _online_softmax(S, m_i, l_i, rows, first, j, qk_scale, B_c, CAUSAL)
        acc, P_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, P_op))
        _release(V_desc, row0 + (j - 1 + STAGES) * B_c, col, V_bar.index(sp), V_free.index(sp), V_smem.index(sp),
                 j - 1 + STAGES < n_tiles, SPECIALIZED)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, O_layout)), 1)
    last = n_tiles - 1
    mbarrier.wait(V_bar.index(last % STAGES), (last // STAGES) & 1)
    _turn(mine, n_tiles, PINGPONG)
    acc = warpgroup_mma(gl.convert_layout(P.to(dtype), P_layout), V_smem.index(last % STAGES), acc, is_async=True)
    _pass(theirs, PINGPONG)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    return acc, m_i, l_i


@gluon.jit
def _pingpong_consumer(Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, K_desc, V_desc, O_desc, LSE, bh,
                       N, row0, col, first, n_tiles, qk_scale, turns, CAUSAL: gl.constexpr, g: gl.constexpr):
    """Consumer warpgroup g of the ping-pong schedule: the overlap schedule on its B_r / 2 query
    rows (from `first`), taking turns with the other warpgroup at the tensor cores, then its
    own epilogue."""
    acc, m_i, l_i = _overlap_consumer(Q_smem.index(g), K_smem, V_smem, Q_bar.index(g), K_bar, V_bar, K_free, V_free,
                                      K_desc, V_desc, row0, col, first, n_tiles, qk_scale, CAUSAL, True,
                                      turns.index(g), turns.index(1 - g), True)
    B_q: gl.constexpr = Q_smem.type.shape[1]
    rows = first + gl.arange(0, B_q, layout=gl.SliceLayout(1, mma_layout(gl.num_warps(), K_smem.type.shape[1])))
    _epilogue(acc, m_i, l_i, rows, O_desc, Q_smem.index(g), LSE, bh, N, row0 + first, col)


@gluon.jit
def _producer(Q_desc, K_desc, V_desc, Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, row0, col, i,
              n_tiles):
    """The producer warp of the warp-specialized schedule (FA3 Section 3.1): Q_i, then K_j and
    V_j into their rings as the consumers free buffers. A fresh mbarrier counts as having
    completed phase 1, so the first pass through the rings waits for nothing. Q_smem holds one
    buffer of query rows per consumer warpgroup (two under ping-pong), Q_bar a barrier each."""
    STAGES: gl.constexpr = K_smem.type.shape[0]
    B_c: gl.constexpr = K_smem.type.shape[1]
    GROUPS: gl.constexpr = Q_smem.type.shape[0]
    B_q: gl.constexpr = Q_smem.type.shape[1]
    for g in gl.static_range(GROUPS):
        _load(Q_desc, row0 + (i * GROUPS + g) * B_q, col, Q_bar.index(g), Q_smem.index(g), True)
    for j in range(n_tiles):
        s = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(K_free.index(s), phase ^ 1)
        _load(K_desc, row0 + j * B_c, col, K_bar.index(s), K_smem.index(s), True)
        mbarrier.wait(V_free.index(s), phase ^ 1)
        _load(V_desc, row0 + j * B_c, col, V_bar.index(s), V_smem.index(s), True)


@gluon.jit
def _plain(Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_desc, V_desc, row0, col, first, n_tiles, qk_scale,
           CAUSAL: gl.constexpr):
    """The plain schedule: tile j's copies issued STAGES - 1 tiles ahead, then S_j, its softmax
    and O += P_j V_j, each wgmma waited for before the next step. Returns O (unnormalized), m, l."""
    STAGES: gl.constexpr = K_smem.type.shape[0]
    B_c: gl.constexpr = K_smem.type.shape[1]
    S_layout: gl.constexpr = mma_layout(gl.num_warps(), B_c)
    D: gl.constexpr = K_smem.type.shape[2]
    O_layout: gl.constexpr = mma_layout(gl.num_warps(), D)
    B_r: gl.constexpr = Q_smem.type.shape[0]
    rows = first + gl.arange(0, B_r, layout=gl.SliceLayout(1, S_layout))
    m_i = gl.full([B_r], -float("inf"), gl.float32, layout=gl.SliceLayout(1, S_layout))
    l_i = gl.zeros([B_r], gl.float32, layout=gl.SliceLayout(1, S_layout))
    acc = gl.zeros([B_r, D], gl.float32, layout=O_layout)
    mbarrier.wait(Q_bar, 0)
    for j in range(n_tiles):
        # The copies of tile j + STAGES - 1 go into the buffers tile j - 1 used: its
        # wgmmas were waited for at the end of the last iteration.
        ahead = j + STAGES - 1
        _load(K_desc, row0 + ahead * B_c, col, K_bar.index(ahead % STAGES), K_smem.index(ahead % STAGES),
              ahead < n_tiles)
        _load(V_desc, row0 + ahead * B_c, col, V_bar.index(ahead % STAGES), V_smem.index(ahead % STAGES),
              ahead < n_tiles)
        s = j % STAGES
        mbarrier.wait(K_bar.index(s), (j // STAGES) & 1)
        # S = Q K_j^T (K_j transposed as a view of shared memory: wgmma reads it so)
        S = warpgroup_mma(Q_smem, K_smem.index(s).permute((1, 0)), gl.zeros([B_r, B_c], gl.float32, S_layout),
                          use_acc=False, is_async=True)
        S = warpgroup_mma_wait(num_outstanding=0, deps=(S, ))
        P, m_i, l_i, alpha = _online_softmax(S, m_i, l_i, rows, first, j, qk_scale, B_c, CAUSAL)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, O_layout)), 1)
        mbarrier.wait(V_bar.index(s), (j // STAGES) & 1)
        P_op = gl.convert_layout(P.to(K_smem.dtype), p_layout(O_layout))
        acc = warpgroup_mma(P_op, V_smem.index(s), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    return acc, m_i, l_i


@gluon.jit
def _tile_and_head(n_tiles, HEADS_OUTER: gl.constexpr, LAST_FIRST: gl.constexpr):
    """(tile, batch x head) of this program on a 1-D grid of n_tiles x batch*heads programs, in
    flash.py's order (_schedule): a head's tiles one after another (HEADS_OUTER: K and V, or Q
    and dO, reused from L2), or one tile of every head before the next; LAST_FIRST reverses the
    tiles, so that under the causal mask the longest programs run first and the last wave holds
    short ones. The host picks HEADS_OUTER (flash.heads_outer)."""
    pid = gl.program_id(0)
    if HEADS_OUTER:
        bh = pid // n_tiles
        t = pid % n_tiles
    else:
        bh = pid % (gl.num_programs(0) // n_tiles)
        t = pid // (gl.num_programs(0) // n_tiles)
    if LAST_FIRST:
        t = n_tiles - 1 - t
    return t, bh


@gluon.jit
def fa3_fwd_kernel(Q_desc, K_desc, V_desc, O_desc, LSE, N, H, qk_scale,
                   CAUSAL: gl.constexpr, SCHEDULE: gl.constexpr, STAGES: gl.constexpr, HEADS_OUTER: gl.constexpr,
                   num_warps: gl.constexpr):
    """SCHEDULE: "plain" (each wgmma waited for before the next step), "overlap" (FA3's
    softmax / wgmma overlap, loads issued by the same warps), "specialized" (the overlap
    schedule in the consumer warps, loads in a producer warp of their own) or "pingpong" (the
    specialized schedule with two consumer warpgroups of num_warps each, on half the query
    rows each, taking turns at the tensor cores)."""
    GROUPS: gl.constexpr = 2 if SCHEDULE == "pingpong" else 1  # consumer warpgroups with rows of their own
    B_q: gl.constexpr = Q_desc.block_type.shape[0]  # query rows a consumer holds
    B_r: gl.constexpr = B_q * GROUPS                # query rows a program computes
    D: gl.constexpr = Q_desc.block_type.shape[1]
    B_c: gl.constexpr = K_desc.block_type.shape[0]
    dtype: gl.constexpr = Q_desc.dtype
    i, bh = _tile_and_head(N // B_r, HEADS_OUTER, CAUSAL)  # the query tile; under the causal mask the last, longest, first
    row0 = (bh // H) * N            # this batch's first row in the (B N) x (H d) matrices
    col = (bh % H) * D              # this head's first column
    SPECIALIZED: gl.constexpr = SCHEDULE == "specialized" or SCHEDULE == "pingpong"

    # Shared memory: Q_i (a buffer of B_q rows per consumer), and rings of STAGES tiles for K
    # and for V, each buffer with an mbarrier that says it is loaded (K_bar, V_bar) and, under
    # warp specialization, one that says every consumer is done with it (K_free, V_free). K_j's
    # buffer frees after S_j, V_j's after P_j V_j: in the overlap schedules those are different
    # moments. `turns`: the ping-pong's, one per consumer warpgroup.
    Q_smem = gl.allocate_shared_memory(dtype, [GROUPS, B_q, D], Q_desc.layout)
    K_smem = gl.allocate_shared_memory(dtype, [STAGES, B_c, D], K_desc.layout)
    V_smem = gl.allocate_shared_memory(dtype, [STAGES, B_c, D], V_desc.layout)
    Q_bar = gl.allocate_shared_memory(gl.int64, [GROUPS, 1], mbarrier.MBarrierLayout())
    K_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    V_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    K_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    V_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for g in gl.static_range(GROUPS):
        mbarrier.init(Q_bar.index(g), count=1)
    for r in gl.static_range(STAGES):
        mbarrier.init(K_bar.index(r), count=1)
        mbarrier.init(V_bar.index(r), count=1)
        mbarrier.init(K_free.index(r), count=GROUPS)
        mbarrier.init(V_free.index(r), count=GROUPS)
    for g in gl.static_range(2):
        mbarrier.init(turns.index(g), count=1)

    # Key tiles this query tile sees: all, or under the causal mask those up to its diagonal
    # (N is a multiple of B_r and B_c).
    if CAUSAL:
        n_tiles = gl.cdiv((i + 1) * B_r, B_c)
    else:
        n_tiles = N // B_c
    if SCHEDULE == "pingpong":
        # Warpgroup 0 (this program's own warps) goes first: its first turn is given here.
        mbarrier.arrive(turns.index(0), count=1)
        gl.warp_specialize([
            (_pingpong_consumer, (Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, K_desc, V_desc, O_desc,
                                  LSE, bh, N, row0, col, i * B_r, n_tiles, qk_scale, turns, CAUSAL, 0)),
            (_pingpong_consumer, (Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, K_desc, V_desc, O_desc,
                                  LSE, bh, N, row0, col, i * B_r + B_q, n_tiles, qk_scale, turns, CAUSAL, 1)),
            (_producer, (Q_desc, K_desc, V_desc, Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free, row0,
                         col, i, n_tiles)),
        ], [num_warps, 1], [PINGPONG_REGS, 24])
    else:
        if SPECIALIZED:
            acc, m_i, l_i = gl.warp_specialize([
                (_overlap_consumer, (Q_smem.index(0), K_smem, V_smem, Q_bar.index(0), K_bar, V_bar, K_free, V_free,
                                     K_desc, V_desc, row0, col, i * B_r, n_tiles, qk_scale, CAUSAL, True,
                                     turns.index(0), turns.index(1), False)),
                (_producer, (Q_desc, K_desc, V_desc, Q_smem, K_smem, V_smem, Q_bar, K_bar, V_bar, K_free, V_free,
                             row0, col, i, n_tiles)),
            ], [1], [24])
        else:
            _load(Q_desc, row0 + i * B_r, col, Q_bar.index(0), Q_smem.index(0), True)
            AHEAD: gl.constexpr = STAGES if SCHEDULE == "overlap" else STAGES - 1  # tiles in flight before tile 0
            for r in gl.static_range(AHEAD):
                _load(K_desc, row0 + r * B_c, col, K_bar.index(r), K_smem.index(r), r < n_tiles)
                _load(V_desc, row0 + r * B_c, col, V_bar.index(r), V_smem.index(r), r < n_tiles)
            if SCHEDULE == "overlap":
                acc, m_i, l_i = _overlap_consumer(Q_smem.index(0), K_smem, V_smem, Q_bar.index(0), K_bar, V_bar, K_free,
                                                  V_free, K_desc, V_desc, row0, col, i * B_r, n_tiles, qk_scale, CAUSAL,
                                                  False, turns.index(0), turns.index(1), False)
            else:
                acc, m_i, l_i = _plain(Q_smem.index(0), K_smem, V_smem, Q_bar.index(0), K_bar, V_bar, K_desc, V_desc,
                                       row0, col, i * B_r, n_tiles, qk_scale, CAUSAL)
        rows = i * B_r + gl.arange(0, B_r, layout=gl.SliceLayout(1, mma_layout(num_warps, B_c)))
        _epilogue(acc, m_i, l_i, rows, O_desc, Q_smem.index(0), LSE, bh, N, row0 + i * B_r, col)  # Q's buffer is free now
    for g in gl.static_range(GROUPS):
        mbarrier.invalidate(Q_bar.index(g))
    for r in gl.static_range(STAGES):
        for bar in gl.static_range(4):
            mbarrier.invalidate((K_bar, V_bar, K_free, V_free)[bar].index(r))
    for g in gl.static_range(2):
        mbarrier.invalidate(turns.index(g))


# --------------------------------------------------------------------------------------------
# The backward in one kernel (FA2's Algorithm 2 as FA3 runs it): a program per key tile K_j,
# V_j, looping over the query tiles that see it, with dK_j and dV_j in registers and dQ_i
# reduced across programs by fp32 atomic adds. Five matmuls a tile pair, against the seven of
# flash.py's two-kernel backward (which recomputes S and dP in its dQ kernel).
# --------------------------------------------------------------------------------------------
# B_r = 64 query rows a step, so that S^T and dP^T ([B_c, B_r], fp32) fit beside the dK and dV
# accumulators in the registers of 8 warps.
# dQ_i's adds go one fp32 element an instruction: two neighbouring columns an instruction
# (red.global.add.v2.f32, commit 74fb704) were right but 1-3% faster, within noise, so the cost is
# the L2's atomic work, not the instructions (benchmarks/results/h100/attention/gluon-dq-vec).
BWD_TILES = {64: dict(B_r=64, B_c=128, STAGES=2, num_warps=8), 128: dict(B_r=64, B_c=128, STAGES=2, num_warps=8)}
# The backward's program order: None takes flash.heads_outer's rule (one key tile of every head
# before the next under the causal mask at these shapes), True / False force heads outermost /
# innermost. An open question (h100/attention/gluon-grid): the masked backward measured slower
# after it left heads-outermost for the rule; set here to time both in one process.
BWD_HEADS_OUTER = None
# (head dim, causal) where adding dQ by TMA reduce-adds measured faster than atomics, side by side
# on an H100 (benchmarks/results/h100/attention/gluon-dq-tma): 1.10x at d=128 non-causal; at d=64
# within noise, at d=128 causal 0.94x (N=4096). Elsewhere the backward adds dQ by atomics.
DQ_BY_TMA = {(128, False)}
# Whether a step overlaps its elementwise work with its matmuls, as FA3's backward does: P^T's
# exponentials computed while dP^T's wgmma runs, dS^T while dV's runs, dQ_i's adds while dK's
# runs (rather than waiting for S^T and dP^T together, then for dV, dK and dQ_i together).
# With it, dQ_i is computed and added in BWD_DQ_PARTS column blocks: at d=128 in halves, whose
# accumulators (16 registers a thread, against 32 for the whole) let the step fit beside dK_j
# and dV_j with little spilling (ptxas's counts: benchmarks/results/h200/notes.md).
# A switch, to time both in one process; off until the GPU grid has passed with it and it has
# measured faster (its prediction: the same notes).
BWD_OVERLAP = False
BWD_DQ_PARTS = {64: 1, 128: 2}


@constexpr_function
def dq_layout(num_warps, d):
    """dQ_i's accumulator [64, d] (d: a column block of dQ_i where it is computed in parts): each
    warpgroup holds the 64 rows and a share of the d columns."""
    groups = num_warps // 4
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, groups], instr_shape=[16, d // groups, 16])


@gluon.jit
def fa3_bwd_kernel(Q_desc, K_desc, V_desc, dO_desc, dK_desc, dV_desc, dQ, dQ_desc, LSE, Delta, N, H, qk_scale, scale,
                   dS_layout: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr, HEADS_OUTER: gl.constexpr,
                   DQ_TMA: gl.constexpr, OVERLAP: gl.constexpr, DQ_PARTS: gl.constexpr, num_warps: gl.constexpr):
    """For key tile j and every query tile i that sees it, with P recomputed from the forward's
    LSE and Delta_i = rowsum(dO_i * O_i):
        S^T = K_j Q_i^T,  P^T = exp(s S^T - LSE_i),  dP^T = V_j dO_i^T,  dS^T = P^T * (dP^T - Delta_i)
        dV_j += P^T dO_i,  dK_j += s dS^T Q_i,  dQ_i += s dS K_j   (dS^T through shared memory)
    Computing S^T rather than S puts P^T and dS^T in registers in the layout wgmma takes as its
    A operand (FA3's choice), so dV and dK need no transpose; dQ reads dS^T transposed from
    shared memory. dQ: fp32 (B, N, H, d), zeroed by the caller; dQ_desc the same memory as a
    (B N) x (H d) matrix of [B_r, d / DQ_PARTS] tiles, for DQ_TMA (dQ_i added by TMA, not by
    atomics). OVERLAP: BWD_OVERLAP's order of a step's wgmmas and elementwise work; DQ_PARTS: the
    column blocks dQ_i is computed and added in (BWD_DQ_PARTS)."""
    B_r: gl.constexpr = Q_desc.block_type.shape[0]
    D: gl.constexpr = Q_desc.block_type.shape[1]
    B_c: gl.constexpr = K_desc.block_type.shape[0]
    dtype: gl.constexpr = Q_desc.dtype
    ST_layout: gl.constexpr = mma_layout(num_warps, B_r)   # S^T, P^T, dP^T, dS^T: [B_c, B_r]
    KV_layout: gl.constexpr = mma_layout(num_warps, D)     # dK_j, dV_j: [B_c, D]
    A_layout: gl.constexpr = p_layout(KV_layout)           # P^T, dS^T as wgmma's A, from registers
    D_part: gl.constexpr = D // DQ_PARTS
    dQ_layout: gl.constexpr = dq_layout(num_warps, D_part)  # a part of dQ_i: [B_r, D_part]
    j, bh = _tile_and_head(N // B_c, HEADS_OUTER, False)  # the key tile; the first sees the most queries
    row0 = (bh // H) * N            # this batch's first row in the (B N) x (H d) matrices
    col = (bh % H) * D              # this head's first column

    # Shared memory: K_j and V_j for the whole loop, rings of STAGES tiles for Q_i and dO_i
    # (one mbarrier a slot for the pair), and dS^T for the dQ matmul.
    K_smem = gl.allocate_shared_memory(dtype, [B_c, D], K_desc.layout)
    V_smem = gl.allocate_shared_memory(dtype, [B_c, D], V_desc.layout)
    Q_smem = gl.allocate_shared_memory(dtype, [STAGES, B_r, D], Q_desc.layout)
    dO_smem = gl.allocate_shared_memory(dtype, [STAGES, B_r, D], dO_desc.layout)
    dS_smem = gl.allocate_shared_memory(dtype, [B_c, B_r], dS_layout)
    if DQ_TMA:  # two dQ_i buffers: one is written while the other's reduce-add may still read it
        dQ_smem = gl.allocate_shared_memory(gl.float32, [2, B_r, D_part], dQ_desc.layout)
    KV_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    Q_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(KV_bar, count=1)
    for r in gl.static_range(STAGES):
        mbarrier.init(Q_bar.index(r), count=1)

    mbarrier.expect(KV_bar, K_desc.block_type.nbytes + V_desc.block_type.nbytes)
    tma_load(K_desc, [row0 + j * B_c, col], KV_bar, K_smem)
    tma_load(V_desc, [row0 + j * B_c, col], KV_bar, V_smem)
    # The query tiles that see key tile j: all, or under the causal mask those from its diagonal.
    # Either way the walk starts at the diagonal tile i0 and wraps around (step t: tile
    # (i0 + t) mod n_q), so that the programs of one head, which run side by side, add into
    # different dQ rows at any moment rather than all into the same ones.
    n_q = N // B_r
    i0 = (j * B_c) // B_r
    count = n_q - i0 if CAUSAL else n_q
    for r in gl.static_range(STAGES - 1):
        _load_q_do(Q_desc, dO_desc, row0 + ((i0 + r) % n_q) * B_r, col, Q_bar.index(r), Q_smem.index(r),
                   dO_smem.index(r), r < count)

    keys = j * B_c + gl.arange(0, B_c, layout=gl.SliceLayout(1, ST_layout))
    dK = gl.zeros([B_c, D], gl.float32, layout=KV_layout)
    dV = gl.zeros([B_c, D], gl.float32, layout=KV_layout)
    dQ_rows = gl.arange(0, B_r, layout=gl.SliceLayout(1, dQ_layout))
    dQ_cols = gl.arange(0, D_part, layout=gl.SliceLayout(0, dQ_layout))
    mbarrier.wait(KV_bar, 0)
    for t in range(count):
        i = (i0 + t) % n_q
        # Tile t + STAGES - 1's copies go into the slot tile t - 1 used: every warp is past its
        # wgmmas (the barrier that ended the last step), so no read of that slot is in flight.
        ahead = t + STAGES - 1
        _load_q_do(Q_desc, dO_desc, row0 + ((i0 + ahead) % n_q) * B_r, col, Q_bar.index(ahead % STAGES),
                   Q_smem.index(ahead % STAGES), dO_smem.index(ahead % STAGES), ahead < count)
        s = t % STAGES
        mbarrier.wait(Q_bar.index(s), (t // STAGES) & 1)
        ST_zero = gl.zeros([B_c, B_r], gl.float32, layout=ST_layout)  # made in the loop: not held across it
        ST = warpgroup_mma(K_smem, Q_smem.index(s).permute((1, 0)), ST_zero, use_acc=False, is_async=True)
        dPT = warpgroup_mma(V_smem, dO_smem.index(s).permute((1, 0)), ST_zero, use_acc=False, is_async=True)
        queries = i * B_r + gl.arange(0, B_r, layout=gl.SliceLayout(0, ST_layout))
        lse = gl.load(LSE + bh * N + queries) * 1.4426950408889634  # natural log -> base 2
        delta = gl.load(Delta + bh * N + queries)
        if OVERLAP:  # FA3's intra-warpgroup overlap: P^T's exponentials while dP^T's wgmma runs
            ST = warpgroup_mma_wait(num_outstanding=1, deps=(ST, ))  # in issue order: S^T is done
        else:
            ST, dPT = warpgroup_mma_wait(num_outstanding=0, deps=(ST, dPT))
        PT = gl.exp2(ST * qk_scale - gl.expand_dims(lse, 0))
        if CAUSAL:
            if i * B_r < (j + 1) * B_c:  # a tile on the diagonal: no query sees a later key
                PT = gl.where(gl.expand_dims(queries, 0) >= gl.expand_dims(keys, 1), PT, 0.0)
        if OVERLAP:  # and dV's wgmma while dS^T is computed and stored
            dV = warpgroup_mma(gl.convert_layout(PT.to(dtype), A_layout), dO_smem.index(s), dV, is_async=True)
            dPT = warpgroup_mma_wait(num_outstanding=1, deps=(dPT, ))
        dST = PT * (dPT - gl.expand_dims(delta, 0))
        dS_smem.store(dST.to(dtype))
        fence_async_shared()
        cta_barrier()  # every warp's part of dS^T is in shared memory before a warpgroup reads all of it
        if not OVERLAP:
            dV = warpgroup_mma(gl.convert_layout(PT.to(dtype), A_layout), dO_smem.index(s), dV, is_async=True)
            dK = warpgroup_mma(gl.convert_layout(dST.to(dtype), A_layout), Q_smem.index(s), dK, is_async=True)
        for p in gl.static_range(DQ_PARTS):  # dQ_i = s dS K_j, a block of D_part columns at a time
            dQ_p = warpgroup_mma(dS_smem.permute((1, 0)), K_smem.slice(p * D_part, D_part, dim=1),
                                 gl.zeros([B_r, D_part], gl.float32, layout=dQ_layout), use_acc=False, is_async=True)
            if OVERLAP and p == 0:  # dK's wgmma after the first part's, which is added while dK's runs
                dK = warpgroup_mma(gl.convert_layout(dST.to(dtype), A_layout), Q_smem.index(s), dK, is_async=True)
                dV, dQ_p = warpgroup_mma_wait(num_outstanding=1, deps=(dV, dQ_p))
            else:
                dQ_p = warpgroup_mma_wait(num_outstanding=0, deps=(dQ_p, ))
            if DQ_TMA:
                dQ_buffer = dQ_smem.index((t * DQ_PARTS + p) % 2)  # its last reduce-add was waited for:
                if p > 0:  # by the last part's store_wait, which this barrier puts before every warp's store
                    cta_barrier()
                dQ_buffer.store(dQ_p * scale)  # (or, for the first part, by the barrier ending the last step)
                fence_async_shared()
                cta_barrier()  # all of the part in shared memory before the copy engine reads it
                tma_add(dQ_desc, [row0 + i * B_r, col + p * D_part], dQ_buffer)
                tma.store_wait(pendings=1)  # the reduce-add before this one has read its buffer
            else:
                offsets = (gl.expand_dims((row0 + i * B_r + dQ_rows) * (H * D) + col + p * D_part, 1)
                           + gl.expand_dims(dQ_cols, 0))
                gl.atomic_add(dQ + offsets, dQ_p * scale, sem="relaxed")
        dV, dK = warpgroup_mma_wait(num_outstanding=0, deps=(dV, dK))
        cta_barrier()  # every warpgroup is done with dS^T and this step's Q_i, dO_i slot (and dQ_i's buffer)

    # dK_j (scaled) and dV_j out through TMA, staged in K_j's and V_j's buffers.
    K_smem.store((dK * scale).to(dtype))
    V_smem.store(dV.to(dtype))
    fence_async_shared()
    tma_store(dK_desc, [row0 + j * B_c, col], K_smem)
    tma_store(dV_desc, [row0 + j * B_c, col], V_smem)
    tma.store_wait(pendings=0)
    mbarrier.invalidate(KV_bar)
    for r in gl.static_range(STAGES):
        mbarrier.invalidate(Q_bar.index(r))


@gluon.jit
def _load_q_do(Q_desc, dO_desc, row, col, bar, Q_buffer, dO_buffer, ok):
    """Q_i and dO_i through TMA, signalled together on `bar` (nothing when not ok)."""
    mbarrier.expect(bar, Q_desc.block_type.nbytes + dO_desc.block_type.nbytes, pred=ok)
    tma_load(Q_desc, [row, col], bar, Q_buffer, pred=ok)
    tma_load(dO_desc, [row, col], bar, dO_buffer, pred=ok)


def supported(q, k, v, dropout_p=0.0, masks=False, capability=None):
    """Whether this path computes the call: None if so, else the reason it does not.
    capability: the GPU's (major, minor), asked of q's device when not given."""
    if capability is None:
        capability = _capability(q.device) if q.device.type == "cuda" else None
    if capability is None or capability[0] != 9:
        return "needs a Hopper GPU (sm90)"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}: bf16 or fp16"
    B, N, H, D = q.shape
    if D not in HEAD_DIMS:
        return f"head dim {D}: {' or '.join(map(str, HEAD_DIMS))}"
    if k.shape != q.shape or v.shape != q.shape:
        return "N_q != N_k or other shapes"
    if N % 128:  # every variant's B_r and B_c divide 128
        return f"N={N}: a multiple of 128"
    if dropout_p or masks:
        return "dropout and masks: not yet"
    if not all(map(_tma_rows, (q, k, v))):
        return "a layout TMA cannot read as (B N) x (H d) rows"
    return None


def auto_variant(q):
    """The variant `gluon=auto` runs for q (B, N, H, d), or None for the portable forward: AUTO's
    head dims and lengths, under 2^31 elements (the larger ones keep the portable int64 path)."""
    variant, min_n = AUTO.get(q.shape[-1], (None, 0))
    return variant if variant and q.shape[1] >= min_n and q.numel() < 2**31 else None


def supported_backward(q, do, dk, dv):
    """Whether `backward` computes a call the forward's `supported` accepted: None if so, else why not."""
    if do.shape != q.shape or do.dtype != q.dtype or dk.dtype != q.dtype or dv.dtype != q.dtype:
        return "dO, dK, dV: the shape and dtype of q"
    if not all(map(_tma_rows, (do, dk, dv))):
        return "a dO, dK or dV layout TMA cannot address as (B N) x (H d) rows"
    if q.numel() >= 2**31:
        return "2^31 elements or more (the dQ atomics index in 32 bits)"
    return None


def _tma_rows(x):
    """x (B, N, H, d) readable by TMA as its (B N) x (H d) matrix: rows of H d contiguous elements,
    batches one after another, 16-byte aligned."""
    B, N, H, D = x.shape
    return x.stride(3) == 1 and x.stride(2) == D and x.stride(0) == N * x.stride(1) and x.data_ptr() % 16 == 0


@functools.cache
def _capability(device):
    return torch.cuda.get_device_capability(device)  # asked once a device: `supported` runs every call


def _matrix(x, block_rows, block_cols=None):
    """x (B, N, H, d) as its (B N) x (H d) matrix, tiles of block_rows x block_cols (d unless given;
    x: bf16, fp16, or the backward's fp32 dQ)."""
    B, N, H, D = x.shape
    block = [block_rows, block_cols or D]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.float32 if x.dtype == torch.float32 else DTYPES[x.dtype])
    return TensorDescriptor(x, [B * N, H * D], [x.stride(1), 1], block, layout)


def descriptors(q, k, v, o, variant=VARIANTS[0]):
    """TMA descriptors; Q's and O's tiles are a consumer warpgroup's rows (B_r / GROUPS)."""
    t = TILES[variant][q.shape[-1]]
    rows = t["B_r"] // t.get("GROUPS", 1)
    return _matrix(q, rows), _matrix(k, t["B_c"]), _matrix(v, t["B_c"]), _matrix(o, rows)


def flash_fwd(q, k, v, causal=False, scale=None, variant=VARIANTS[0]):
    """O (B, N, H, d) and LSE (B, H, N) fp32 of softmax(s Q K^T) V, for q, k, v (B, N, H, d);
    variant: one of VARIANTS (the kernel's SCHEDULE). One clear error where `supported` says no."""
    reason = supported(q, k, v)
    if reason:
        raise ValueError(f"attention.hopper: {reason}")
    return forward(q, k, v, causal, q.shape[-1] ** -0.5 if scale is None else scale, variant)


def forward(q, k, v, causal, scale, variant):
    """flash_fwd for a call that `supported` has already accepted (flash.py's dispatch)."""
    B, N, H, D = q.shape
    o = torch.empty(B, N, H, D, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    t = TILES[variant][D]
    grid = (N // t["B_r"] * B * H, )
    fa3_fwd_kernel[grid](*descriptors(q, k, v, o, variant), lse, N, H, scale * LOG2E, CAUSAL=causal,
                         SCHEDULE=variant, STAGES=t["STAGES"], HEADS_OUTER=flash.heads_outer(q.device, B * H, causal),
                         num_warps=t["num_warps"])
    return o, lse


@triton.jit
def bwd_preprocess_kernel(O, dO, Delta, dQ, N, H, stride_ob, stride_on, stride_oh, stride_dob, stride_don, stride_doh,
                          D: tl.constexpr, B_r: tl.constexpr):
    """The backward's first pass, over B_r rows of one head: Delta_i = rowsum(dO_i * O_i) into
    (B, H, N), and the rows' fp32 dQ accumulator ((B, N, H, d), contiguous) zeroed for the
    kernel's atomic adds. One read of O and dO in their own dtype, no fp32 copies of them."""
    i = tl.program_id(0)
    bh = tl.program_id(1)  # 32-bit offsets: supported_backward refuses 2^31 elements or more
    b, h = bh // H, bh % H
    rows = i * B_r + tl.arange(0, B_r)
    cols = tl.arange(0, D)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + cols[None, :])
    do = tl.load(dO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don + cols[None, :])
    tl.store(Delta + bh * N + rows, _row_delta(o, do, Delta, rows, rows < N, False))
    tl.store(dQ + ((b * N + rows[:, None]) * H + h) * D + cols[None, :], tl.zeros([B_r, D], tl.float32))


def preprocess(do, o):
    """Delta (B, H, N) fp32 and a zeroed fp32 dQ accumulator (B, N, H, d), in one pass."""
    B, N, H, D = o.shape
    delta = torch.empty(B, H, N, device=o.device, dtype=torch.float32)
    dq_acc = torch.empty(B, N, H, D, device=o.device, dtype=torch.float32)
    B_r = 64  # N is a multiple of 128 here (`supported`)
    bwd_preprocess_kernel[(N // B_r, B * H)](o, do, delta, dq_acc, N, H, o.stride(0), o.stride(1), o.stride(2),
                                             do.stride(0), do.stride(1), do.stride(2), D=D, B_r=B_r)
    return delta, dq_acc


def dq_by_tma(dq_add, head_dim, causal):
    """Whether the backward adds dQ by TMA reduce-adds: dq_add "tma", or "auto" at a (head dim,
    causal) that DQ_BY_TMA names; by atomics otherwise."""
    return dq_add == "tma" or (dq_add == "auto" and (head_dim, causal) in DQ_BY_TMA)


def backward(do, q, k, v, o, lse, causal, scale, dq, dk, dv, dq_add="auto"):
    """dQ, dK, dV of softmax(s Q K^T) V into dq, dk, dv (B, N, H, d) from the forward's o and
    lse (natural log, (B, H, N)), for a call that `supported` and `supported_backward` accept
    (flash.py's dispatch asks both). dq_add: how dQ's tiles are added, "atomics", "tma" (TMA
    reduce-adds) or "auto" (tma where DQ_BY_TMA names the shape)."""
    B, N, H, D = q.shape
    t = BWD_TILES[D]
    delta, dq_acc = preprocess(do, o if o.stride(-1) == 1 else o.contiguous())
    dS_layout = gl.NVMMASharedLayout.get_default_for([t["B_c"], t["B_r"]], DTYPES[q.dtype])
    heads_outer = flash.heads_outer(q.device, B * H, causal) if BWD_HEADS_OUTER is None else BWD_HEADS_OUTER
    parts = BWD_DQ_PARTS[D] if BWD_OVERLAP else 1
    fa3_bwd_kernel[(N // t["B_c"] * B * H, )](
        _matrix(q, t["B_r"]), _matrix(k, t["B_c"]), _matrix(v, t["B_c"]), _matrix(do, t["B_r"]),
        _matrix(dk, t["B_c"]), _matrix(dv, t["B_c"]), dq_acc, _matrix(dq_acc, t["B_r"], D // parts), lse, delta, N, H,
        scale * LOG2E, scale, dS_layout=dS_layout, CAUSAL=causal, STAGES=t["STAGES"], HEADS_OUTER=heads_outer,
        DQ_TMA=dq_by_tma(dq_add, D, causal), OVERLAP=BWD_OVERLAP, DQ_PARTS=parts, num_warps=t["num_warps"])
    dq.copy_(dq_acc)
