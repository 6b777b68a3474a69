"""Standard attention (the FlashAttention paper's baseline): S = QK^T materialised in HBM,
softmax in fp32, dropout, then times V. Memory grows as N^2; used as the reference."""

import math

import torch

from attention.checks import check_qkv


def causal_mask(n_q, n_k, device):
    """Bottom-right aligned causal mask (True = visible): query i sees key j <= i + n_k - n_q.
    Equal to the usual lower triangle when n_q == n_k; with a KV cache the new queries see
    every cached key."""
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return j <= i + (n_k - n_q)


def attention_probs(q, k, causal=False, scale=None):
    """softmax(scale * Q K^T) in fp32 (fp64 for fp64 inputs), shape (B, H, N_q, N_k).
    Rows that see no key are 0."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(dt), k.to(dt)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def naive_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, keep_mask=None):
    """q: (B, N_q, H, d), k, v: (B, N_k, H, d) -> (B, N_q, H, d) in q's dtype.
    keep_mask (B, H, N_q, N_k), if given, is used as the dropout mask instead of a fresh draw."""
    check_qkv(q, k, v, "naive")
    p = attention_probs(q, k, causal, scale)
    if keep_mask is not None:
        p = p * keep_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        p = torch.nn.functional.dropout(p, dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)
