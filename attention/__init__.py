"""Attention backends behind one signature.

Every backend is `fn(q, k, v, causal=False, dropout_p=0.0, scale=None) -> o` with q of shape
(batch, N_q, heads, head_dim) and k, v of shape (batch, N_k, heads, head_dim): the layout a
fused QKV projection produces, so the model never transposes. Causal masks are aligned
bottom-right (query i sees key j <= i + N_k - N_q) in every backend.

    from attention import get_attention
    attn = get_attention("sdpa", kernel="flash")

Options (`attention.options` in the Hydra config; null there: the default) are the backend's own,
declared in its module's OPTIONS (name -> allowed values): keyword arguments of its function
(sdpa's kernel), or,
for a module with `configure` (flash's launch options: autotuning, TMA, ...), its process-wide
launch configuration.

Beyond causal, naive, sdpa and flash take window=W (each query sees its last W keys) and
documents=(start, end) (attention.document_bounds: packed documents), flash and naive also
block_mask= (attention.block_mask: block-sparse layouts); see attention/masks.py. flash1 takes
none of them.

With packed=True the function takes qkv (batch, N, 3, heads, head_dim) instead, the fused
projection's output viewed so. Backends with a packed entry point (PACKED) return the gradient
in that one tensor; the others unbind it, and autograd stacks their three gradients back (a
copy of dQKV per layer).
"""

import functools
import importlib

from attention.masks import BlockMask, block_mask, document_bounds, padding_documents  # noqa: F401 (the package's API)

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
    options = {k: v for k, v in options.items() if v is not None}  # null in the config: the backend's default
    module, fn = PACKED[name] if packed and name in PACKED else BACKENDS[name]
    module = importlib.import_module(module)
    fn = getattr(module, fn)
    if hasattr(module, "configure"):
        module.configure(**options)
    elif options:
        fn = functools.partial(fn, **options)
    return functools.partial(_unpacking, fn) if packed and name not in PACKED else fn


def _unpacking(fn, qkv, **kwargs):
    return fn(*qkv.unbind(2), **kwargs)
