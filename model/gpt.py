"""GPT-2 (Radford et al. 2019) with a pluggable attention backend.

Pre-LN blocks, GELU (tanh) MLP, learned positions sized to the context, input and output
embeddings tied, GPT-2 init with residual projections scaled by 1/sqrt(2 n_layer).
Attention tensors stay in (batch, seq, heads, head_dim): the fused QKV projection yields that
layout, every backend takes it, so the model never transposes.
"""

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import block_mask, document_bounds, get_attention
from attention.masks import butterfly
from model.loss import cross_entropy


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    context: int = 1024          # number of learned positions: the longest sequence the model takes
    vocab_size: int = 50257
    vocab_multiple: int = 128    # embedding rows padded to a multiple of this (tensor-core shapes);
                                 # the padding never reaches a softmax, a logit or an export
    cross_entropy: str = "auto"  # model/loss.py: fused | plain | upcast | liger; auto = fused on CUDA, else upcast
    xent_chunk: int = 4096       # rows per chunk of the fused cross-entropy (memory against matmul size)
    dropout: float = 0.0         # embedding and residual dropout
    attn_dropout: float = 0.0    # dropout on the attention probabilities (inside the kernel)
    bias: bool = True
    qkv_packed: bool = True      # attention takes the projection's (B, T, 3, H, d) output whole, so that
                                 # dQKV comes back in one tensor (attention/__init__.py); False: q, k, v apart
    attention: str = "sdpa"
    attention_options: dict = field(default_factory=dict)
    window: int | None = None    # sliding-window attention: each token sees its last `window` tokens
    documents: bool = False      # document masking: a token sees only its own document's tokens
    block_sparse: str | None = None  # block-sparse attention on a layout of sparse_block tiles: butterfly
    sparse_block: int = 128      # its tile size (a multiple of the kernel's tiles)
    eot: int = 50256             # the token that ends a document (<|endoftext|>, data/prepare.py)

    @property
    def padded_vocab(self):
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


SPARSE_LAYOUTS = {"butterfly": butterfly}  # name -> (n tiles) -> an n x n boolean layout (attention/masks.py)


@functools.lru_cache(maxsize=16)
def sparse_mask(layout, block, T, device):
    """The causal BlockMask of a named layout for T tokens: built once a length and device, and
    shared by every layer and head."""
    return block_mask(SPARSE_LAYOUTS[layout](-(-T // block)).to(device), block, T, T, causal=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.attn_dropout
        self.masks = {} if cfg.window is None else {"window": cfg.window}  # passed only when set (flash1 takes none)
        if cfg.block_sparse not in (None, *SPARSE_LAYOUTS):
            raise ValueError(f"block_sparse={cfg.block_sparse!r}: the layouts are {', '.join(SPARSE_LAYOUTS)} (or None)")
        self.block_sparse, self.sparse_block = cfg.block_sparse, cfg.sparse_block
        self.attn = get_attention(cfg.attention, **cfg.attention_options)
        self.attn_packed = get_attention(cfg.attention, packed=True, **cfg.attention_options) if cfg.qkv_packed else None

    def forward(self, x, cache=None, layer=0, documents=None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)
        dropout_p = self.attn_dropout if self.training else 0.0
        masks = self.masks if documents is None else {**self.masks, "documents": documents}
        if self.block_sparse:
            if cache is not None:
                raise ValueError("model.block_sparse: generation with a KV cache is not supported (its queries "
                                 "do not start on a tile of the layout); generate with model.block_sparse=null")
            masks = {**masks, "block_mask": sparse_mask(self.block_sparse, self.sparse_block, T, x.device)}
        if cache is None and self.attn_packed is not None:  # the backward returns dQKV in this layout: no stacking copy
            y = self.attn_packed(qkv, causal=True, dropout_p=dropout_p, **masks)
        else:
            q, k, v = qkv.unbind(2)
            if cache is not None:  # the new queries attend to every cached key (bottom-right causal)
                k, v = cache.append(layer, k, v)
            y = self.attn(q, k, v, causal=True, dropout_p=dropout_p, **masks)
        return self.resid_dropout(self.c_proj(y.reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0, documents=None):
        x = x + self.attn(self.ln_1(x), cache, layer, documents)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of the tokens seen so far, for every layer, preallocated to max_len:
    (n_layer, batch, max_len, heads, head_dim), the layout the attention backends take, so a
    prefix is a strided view and nothing is copied per step. `length` advances once a forward
    pass has run through all layers."""

    def __init__(self, cfg, batch, max_len, device, dtype):
        if max_len > cfg.context:
            raise ValueError(f"{max_len} tokens exceed the model's context of {cfg.context} positions")
        shape = (cfg.n_layer, batch, max_len, cfg.n_head, cfg.n_embd // cfg.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.ids = torch.empty(batch, max_len, device=device, dtype=torch.long) if cfg.documents else None
        self.length = 0

    def tokens(self, idx):
        """The cached tokens followed by idx (document masking needs every document boundary)."""
        self.ids[:, self.length:self.length + idx.shape[1]] = idx
        return self.ids[:, :self.length + idx.shape[1]]

    def append(self, layer, k, v):
        end = self.length + k.shape[1]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache full: {end} tokens, room for {self.k.shape[2]}")
        self.k[layer, :, self.length:end] = k
        self.v[layer, :, self.length:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        # The embedding table is built without drawing random numbers (_weight; the head on the
        # meta device, then tied), so that the padding does not shift the random stream: a seed
        # gives the same model whatever vocab_multiple is (_init_weights draws the real rows).
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.n_embd, _weight=torch.empty(cfg.padded_vocab, cfg.n_embd)),
            wpe=nn.Embedding(cfg.context, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False, device="meta")
        self.lm_head.weight = self.transformer.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if m is self.lm_head or m is self.transformer.wte:
            # Real rows drawn exactly as without padding (same random stream, same model for a
            # seed); padding rows zero.
            nn.init.normal_(m.weight[:self.cfg.vocab_size], mean=0.0, std=0.02)
            nn.init.zeros_(m.weight[self.cfg.vocab_size:])
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self, non_embedding=False):
        """Parameter count (tied weights once, vocabulary padding not counted); non_embedding
        drops the position table, as the 6N term of the FLOP count does (nanoGPT's convention)."""
        n = sum(p.numel() for p in self.parameters()) - (self.cfg.padded_vocab - self.cfg.vocab_size) * self.cfg.n_embd
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len):
        return training_flops_per_token(self.cfg, self.num_params(non_embedding=True), seq_len)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, vocab_size) when targets is None, else the mean cross-entropy loss
        (the loss path never materialises the logits: model/loss.py). With a KVCache, idx are
        the tokens after the cached ones (prefill, then one token per decode step)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context:
            raise ValueError(f"sequence length {start + T} exceeds the model's context of {self.cfg.context} "
                             "positions; build the model with a larger context")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        documents = None
        if self.cfg.documents:  # once per forward, for every layer: a document ends with its eot token
            ids = idx if cache is None else cache.tokens(idx)
            ends = (ids == self.cfg.eot).to(torch.int32)
            documents = document_bounds(ends.cumsum(1) - ends)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, documents)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x)[..., :self.cfg.vocab_size]
        impl = self.cfg.cross_entropy
        if impl == "auto":
            impl = "fused" if x.is_cuda else "upcast"
        return cross_entropy(x, self.lm_head.weight, targets, self.cfg.vocab_size, impl, self.cfg.xent_chunk)

    def optimizer(self, lr, weight_decay, betas, device_type):
        return adamw(self, lr, weight_decay, betas, device_type)


def adamw(model, lr, weight_decay, betas, device_type):
    """AdamW; weight decay on matrices (and embeddings) only, not on biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device_type == "cuda")


def training_flops_per_token(cfg, non_embedding_params, seq_len):
    """Training FLOPs per token: 6N + 12 L H Q T (PaLM appendix B; forward + backward; the
    attention term counts the full T x T scores, causal or not, as PaLM and nanoGPT do)."""
    return 6 * non_embedding_params + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * seq_len


# Peak dense bf16 tensor throughput (FLOP/s) by device name, for MFU. An unknown device gets
# no MFU rather than a made-up peak.
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("A6000", 155e12)]


def peak_flops(device_name):
    return next((f for key, f in PEAK_BF16_FLOPS if key in device_name), None)
