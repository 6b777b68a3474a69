"""Attention backends behind one signature.

Every backend is `fn(q, k, v, causal=False, dropout_p=0.0, scale=None) -> o` with q of shape
(batch, N_q, heads, head_dim) and k, v of shape (batch, N_k, heads, head_dim): the layout a
fused QKV projection produces, so the model never transposes. Causal masks are aligned
bottom-right (query i sees key j <= i + N_k - N_q) in every backend.

    from attention import get_attention
    attn = get_attention("sdpa", kernel="flash")
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


def get_attention(name, **options):
    """The attention function called `name`, with backend options (e.g. sdpa's kernel) bound."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}")
    module, fn = BACKENDS[name]
    fn = getattr(importlib.import_module(module), fn)
    return functools.partial(fn, **options) if options else fn
