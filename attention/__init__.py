"""Attention backends behind one signature.

Every backend is `fn(q, k, v, causal=False, dropout_p=0.0, scale=None) -> o` with q of shape
(batch, N_q, heads, head_dim) and k, v of shape (batch, N_k, heads, head_dim): the layout a
fused QKV projection produces, so the model never transposes. Causal masks are aligned
bottom-right (query i sees key j <= i + N_k - N_q) in every backend.

    from attention import get_attention
    attn = get_attention("sdpa", kernel="flash")

Options (`attention.options` in the Hydra config) are the backend's own, declared in its
module's OPTIONS (name -> allowed values): keyword arguments of its function (sdpa's kernel), or,
for a module with `configure` (flash's launch options: autotuning, TMA, ...), its process-wide
launch configuration.

With packed=True the function takes qkv (batch, N, 3, heads, head_dim) instead, the fused
projection's output viewed so. Backends with a packed entry point (PACKED) return the gradient
in that one tensor; the others unbind it, and autograd stacks their three gradients back (a
copy of dQKV per layer).
"""

import functools
import importlib

# name -> (module, function); imported lazily so that `naive` and `sdpa` need no Triton.
BACKENDS = {
    "naive": ("attention.naive", "naive_attention"),
    "sdpa": ("attention.sdpa", "sdpa_attention"),
    "flash": ("attention.flash", "flash_attention"),
    "flash1": ("attention.flash1", "flash1_attention"),
}


PACKED = {"flash": ("attention.flash", "flash_attention_qkvpacked")}


def options_of(name):
    """The options backend `name` takes: name -> allowed values (the first its default)."""
    return getattr(importlib.import_module(BACKENDS[name][0]), "OPTIONS", {})


def get_attention(name, packed=False, **options):
    """The attention function called `name` with its options applied (see above); packed: the
    one taking qkv packed."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}")
    module, fn = PACKED[name] if packed and name in PACKED else BACKENDS[name]
    module = importlib.import_module(module)
    fn = getattr(module, fn)
    if hasattr(module, "configure"):
        module.configure(**options)
    elif options:
        fn = functools.partial(fn, **options)
    return functools.partial(_unpacking, fn) if packed and name not in PACKED else fn


def document_bounds(doc_ids):
    """Document masking's input to every backend: (start, end), int32 (B, N), the first and
    one past the last position of each position's document, a document being a run of equal
    ids in doc_ids (B, N) (e.g. a running count of <|endoftext|> tokens). Computed once per
    batch and handed to every layer."""
    import torch
    B, N = doc_ids.shape
    pos = torch.arange(N, device=doc_ids.device, dtype=torch.int32).expand(B, N)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(1).values
    end = torch.where(last, pos + 1, N).flip(1).cummin(1).values.flip(1)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def _unpacking(fn, qkv, **kwargs):
    return fn(*qkv.unbind(2), **kwargs)
