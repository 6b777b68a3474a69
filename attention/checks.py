"""Input validation shared by every attention backend: one clear error per bad input."""

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_qkv(q, k, v, backend, head_dims=None, need_gpu=False):
    """q: (B, N_q, H, d); k, v: (B, N_k, H, d). Raises ValueError naming what is wrong."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{backend}: q, k, v must be 4-D (batch, seq, heads, head_dim); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{backend}: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} (k and v equal; batch, heads, head_dim shared with q)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{backend}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if head_dims is not None:
        if q.dtype not in LOW_PRECISION:
            raise ValueError(f"{backend}: supports float16 and bfloat16 inputs, got {q.dtype}; "
                             "train under bf16 autocast (train.dtype=bfloat16) or cast q, k, v")
        if q.shape[-1] not in head_dims:
            raise ValueError(f"{backend}: head_dim {q.shape[-1]} is not supported; "
                             f"supported: {', '.join(map(str, head_dims))}")
    if need_gpu and not q.is_cuda:
        raise ValueError(f"{backend}: needs CUDA tensors (on CPU, set TRITON_INTERPRET=1 to run the "
                         "kernels in Triton's interpreter, slowly)")
