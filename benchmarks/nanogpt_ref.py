"""The reference a user would write instead of using this project: a minimal nanoGPT-style
GPT-2 (Karpathy's nanoGPT model.py, reduced to what a training step runs).

Vocabulary padded to 50304, one fused QKV linear, SDPA with is_causal, GELU-tanh MLP, tied
embeddings, F.cross_entropy on the bf16 logits (under autocast), no dropout. Trained with fused
AdamW, no gradient clipping, the whole model under torch.compile (benchmarks/train_speed.py).
"""

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel


class Block(nn.Module):
    def __init__(self, n_embd, n_head, sdpa_backend=None):
        super().__init__()
        self.n_head, self.sdpa_backend = n_head, sdpa_backend
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # A kernel pin must sit inside the compiled code: torch.compile ignores one around the call.
        with sdpa_kernel(self.sdpa_backend) if self.sdpa_backend is not None else nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, context, n_layer=12, n_head=12, n_embd=768, vocab_size=50304, sdpa_backend=None):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(context, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, sdpa_backend) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
