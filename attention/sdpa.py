"""PyTorch's scaled_dot_product_attention, optionally pinned to one of its kernels."""

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from attention.checks import check_qkv

KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
OPTIONS = {"kernel": (None, *KERNELS)}  # None: torch chooses


def sdpa_attention(q, k, v, causal=False, dropout_p=0.0, scale=None, kernel=None, window=None, documents=None):
    """q: (B, N_q, H, d), k, v: (B, N_k, H, d). SDPA wants (B, H, N, d): the transposes are
    views, and the output comes back in (B, N, H, d) memory order, so no copy is made.
    kernel: None (torch chooses) or one of KERNELS. window (with causal): each query sees its
    last `window` keys; documents: only the keys of its document (attention.document_bounds),
    causally or not; both through a boolean mask (SDPA has neither of its own)."""
    check_qkv(q, k, v, "sdpa")
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"sdpa: unknown kernel {kernel!r}; available: {', '.join(KERNELS)}")
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    mask = None
    if window is not None or documents is not None:
        if window is not None and not causal:
            raise ValueError("sdpa: a sliding window is causal: pass causal=True")
        from attention.naive import mask as visible
        mask, causal = visible(q.shape[2], k.shape[2], q.device, window, documents, causal=causal), False
    elif causal and q.shape[2] != k.shape[2]:
        mask, causal = causal_lower_right(q.shape[2], k.shape[2]), False  # same convention as ours
    if kernel is None:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=scale)
    else:
        with sdpa_kernel(KERNELS[kernel]):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=scale)
    return o.transpose(1, 2)
