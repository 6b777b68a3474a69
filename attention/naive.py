"""Standard attention, the FlashAttention paper's baseline, as PyTorch users write it (the model
is HuggingFace GPT-2's eager attention): S = Q K^T materialised in HBM in the inputs' dtype
(tensor cores for fp16 / bf16), the softmax in fp32, P cast back to the inputs' dtype, dropout,
then P V. Memory grows as N^2.

`reference_attention` computes the same in fp32 throughout (fp64 for fp64 inputs): the
reference the kernel tests measure errors against, not a baseline to time.
"""

import math

import torch

from attention.checks import check_qkv


def causal_mask(n_q, n_k, device, window=None):
    """Bottom-right aligned causal mask (True = visible): query i sees key j <= i + n_k - n_q,
    and with a window only its last `window` keys (j > i + n_k - n_q - window). Equal to the
    usual lower triangle when n_q == n_k; with a KV cache the new queries see every cached key."""
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    visible = j <= i + (n_k - n_q)
    return visible if window is None else visible & (j > i + (n_k - n_q) - window)


def mask(n_q, n_k, device, window=None, documents=None, block_mask=None, causal=True):
    """The visible (query, key) pairs, bottom-right aligned: causal_mask (when causal), with
    documents ((start, end) of each key position's document, attention.document_bounds) only
    keys of the query's own document, with a block mask (attention.masks) only its tiles:
    (N_q, N_k), or broadcastable to (B, H, N_q, N_k)."""
    visible = causal_mask(n_q, n_k, device, window) if causal else torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if documents is not None:  # each query's document (queries are the last n_q positions)
        start, end = (d[:, n_k - n_q:, None] for d in documents)
        j = torch.arange(n_k, device=device)[None, None, :]
        visible = visible & ((j >= start) & (j < end))[:, None]  # causal rows stop inside their document anyway
    if block_mask is not None:
        visible = visible & block_mask.dense().to(device)[None]
    return visible


def _softmax(s, q, k, causal, window=None, documents=None, block_mask=None):
    """softmax of scores s (B, H, N_q, N_k) in fp32 (fp64 for fp64 scores), masked causally
    (and to a window, documents, a block mask); rows that see no key are 0."""
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    if not causal and window is not None:
        raise ValueError("naive: a sliding window is causal: pass causal=True")
    if causal or documents is not None or block_mask is not None:
        s = s.masked_fill(~mask(q.shape[1], k.shape[1], q.device, window, documents, block_mask, causal), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p.nan_to_num(0.0) if (causal and q.shape[1] > k.shape[1]) or block_mask is not None else p


def _scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def naive_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, window=None, documents=None, block_mask=None):
    """q: (B, N_q, H, d), k, v: (B, N_k, H, d) -> (B, N_q, H, d) in v's dtype. window (with
    causal): each query sees its last `window` keys; documents: only those of its document;
    block_mask: only its tiles (the scores are computed whole all the same)."""
    check_qkv(q, k, v, "naive")
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * _scale(q, scale)  # the inputs' dtype
    p = _softmax(s, q, k, causal, window, documents, block_mask).to(v.dtype)
    if dropout_p > 0:
        p = torch.nn.functional.dropout(p, dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def reference_probs(q, k, causal=False, scale=None, window=None, documents=None, block_mask=None):
    """softmax(scale * Q K^T) with the matmul in fp32 (fp64 for fp64 inputs), (B, H, N_q, N_k)."""
    dt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(dt), k.to(dt)) * _scale(q, scale)
    return _softmax(s, q, k, causal, window, documents, block_mask)


def reference_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, keep_mask=None, window=None,
                        documents=None, block_mask=None):
    """Attention in fp32 throughout (fp64 for fp64 inputs), returned in v's dtype. keep_mask
    (B, H, N_q, N_k), if given, is the dropout mask instead of a fresh draw."""
    p = reference_probs(q, k, causal, scale, window, documents, block_mask)
    if keep_mask is not None:
        p = p * keep_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        p = torch.nn.functional.dropout(p, dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)
