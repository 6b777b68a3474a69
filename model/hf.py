"""transformers' GPT2LMHeadModel behind our model's interface (`model.impl=hf`): the
FlashAttention paper's Table 2 baseline, trained by the same loop, data, optimizer and
logging as ours. Our GPT-2 and transformers' share every parameter name; transformers' Conv1D
layers store their weights transposed (in, out), and its vocabulary is not padded.

    python train.py model.impl=hf attention=naive    # transformers' eager attention
    python train.py model.impl=hf attention=sdpa     # transformers' SDPA attention
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.gpt import GPT, adamw, training_flops_per_token

HF_ATTENTION = {"naive": "eager", "sdpa": "sdpa"}  # our backend name -> attn_implementation
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")


def to_hf_state_dict(state_dict, vocab_size):
    """Our GPT's state dict -> GPT2LMHeadModel's (Conv1D weights transposed, padding rows dropped)."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith(CONV1D):
            t = t.t()
        elif name in EMBEDDINGS:
            t = t[:vocab_size]
        out[name] = t.contiguous()
    return out


def hf_config(cfg, attn_implementation="eager"):
    from transformers import GPT2Config
    if not cfg.bias:
        raise ValueError("model.impl=hf needs bias=true: transformers' GPT-2 always has biases")
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout,
                      embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout, layer_norm_epsilon=1e-5,
                      attn_implementation=attn_implementation)


class HFGPT(nn.Module):
    """GPT2LMHeadModel, initialised with the weights our GPT draws for the same seed (so that
    the two implementations start from one model), with our forward(idx, targets) contract."""

    def __init__(self, cfg):
        super().__init__()
        from transformers import GPT2LMHeadModel
        if cfg.attention not in HF_ATTENTION:
            raise ValueError(f"model.impl=hf runs transformers' own attention: attention=naive (its eager "
                             f"attention) or attention=sdpa, not {cfg.attention!r}")
        self.cfg = cfg
        ours = GPT(dataclasses.replace(cfg, attention="naive"))
        self.hf = GPT2LMHeadModel(hf_config(cfg, HF_ATTENTION[cfg.attention]))
        self.hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg.vocab_size))
        self._non_embedding_params = ours.num_params(non_embedding=True)

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        return n - self.hf.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len):
        return training_flops_per_token(self.cfg, self._non_embedding_params, seq_len)

    def forward(self, idx, targets=None):
        if idx.shape[1] > self.cfg.context:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's context of {self.cfg.context} "
                             "positions; build the model with a larger context")
        logits = self.hf(input_ids=idx).logits
        if targets is None:
            return logits
        # transformers' own loss shifts the labels; ours are shifted already. fp32 as it does.
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def optimizer(self, lr, weight_decay, betas, device_type):
        return adamw(self, lr, weight_decay, betas, device_type)
