"""transformers' GPT2LMHeadModel behind our model's interface (`model.impl=hf`): the
FlashAttention paper's Table 2 baseline, trained by the same loop, data, optimizer and
logging as ours. Our GPT-2 and transformers' share every parameter name; transformers' Conv1D
layers store their weights transposed (in, out), and its vocabulary is not padded.

    python train.py model.impl=hf attention=naive    # transformers' eager attention
    python train.py model.impl=hf attention=sdpa     # transformers' SDPA attention
    python -m training.weights export runs/RUN OUT_DIR   # a GPT2LMHeadModel folder (export below)

`register_flash()` makes our Triton kernel a transformers attention implementation:
GPT2LMHeadModel.from_pretrained(OUT_DIR, attn_implementation="triton_fa2") then runs it.
"""

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig, adamw, training_flops_per_token
from model.pretrained import to_hf_state_dict

# Our kernel's name inside transformers. Not "flash": transformers takes any implementation
# name containing "flash" for a flash-attn package or hub kernel and looks it up there.
HF_FLASH = "triton_fa2"
HF_ATTENTION = {"naive": "eager", "sdpa": "sdpa", "flash": HF_FLASH}  # our backend name -> attn_implementation


def hf_config(cfg, attn_implementation="eager"):
    from transformers import GPT2Config
    if attn_implementation == HF_FLASH:
        register_flash()
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
            raise ValueError(f"model.impl=hf runs transformers' attention: attention=naive (its eager attention), "
                             f"attention=sdpa, or attention=flash (ours, registered with transformers), not {cfg.attention!r}")
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


# --------------------------------------------------------------------------------------------
# Our kernel inside transformers
# --------------------------------------------------------------------------------------------
def flash_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function contract: query/key/value (B, H, N, d) -> ((B, N_q, H, d),
    no weights). Causal (bottom-right: prefill and cached decoding alike); a padding mask is not
    supported by the kernel and is refused rather than ignored."""
    from attention.flash import flash_attention
    if attention_mask is not None:
        raise ValueError(f"attn_implementation={HF_FLASH!r} has no padding mask: pass unpadded batches "
                         "(attention_mask all ones, or none)")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attn_implementation={HF_FLASH!r} runs in float16 or bfloat16, got {query.dtype}: "
                         "load the model with dtype=torch.bfloat16")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    o = flash_attention(q, k, v, causal=getattr(module, "is_causal", True),
                        dropout_p=dropout if module.training else 0.0, scale=scaling)
    return o, None


def register_flash():
    """Register our kernel with transformers as HF_FLASH (idempotent). Its mask function is
    FlashAttention-2's: no mask unless a sequence is padded."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    AttentionInterface.register(HF_FLASH, flash_attention_forward)
    AttentionMaskInterface.register(HF_FLASH, flash_attention_mask)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
# Where GPT-2's BPE files (encoder.json + vocab.bpe) are looked for when --tokenizer is not given.
TOKENIZER_DIRS = [os.environ.get("GPT2_BPE_DIR", ""), str(Path(__file__).resolve().parents[2] / "shared/data/gpt2-bpe")]


def export(loaded, out_dir, tokenizer_dir=None):
    """Weights (state dict in our layout, architecture dict, description: training/weights.py
    reads them from any source) -> a GPT2LMHeadModel folder: config.json, model.safetensors and,
    when GPT-2's BPE files are found, the tokenizer. Returns the model."""
    from transformers import GPT2LMHeadModel
    sd, arch, what = loaded
    cfg = GPTConfig(**arch)
    hf = GPT2LMHeadModel(hf_config(cfg))
    hf.load_state_dict(to_hf_state_dict(sd, cfg.vocab_size))
    out_dir = Path(out_dir)
    hf.save_pretrained(out_dir)  # safetensors
    bpe = next((Path(d) for d in ([tokenizer_dir] if tokenizer_dir else TOKENIZER_DIRS)
                if d and (Path(d) / "encoder.json").is_file() and (Path(d) / "vocab.bpe").is_file()), None)
    if bpe is not None:
        import shutil
        import tempfile
        from transformers import GPT2TokenizerFast
        with tempfile.TemporaryDirectory() as tmp:  # the names from_pretrained looks for, in every version
            shutil.copy(bpe / "encoder.json", Path(tmp) / "vocab.json")
            shutil.copy(bpe / "vocab.bpe", Path(tmp) / "merges.txt")
            GPT2TokenizerFast.from_pretrained(tmp).save_pretrained(out_dir)
    print(f"exported {what} to {out_dir} (GPT2LMHeadModel, {sum(p.numel() for p in hf.parameters()):,} parameters, "
          f"tokenizer {'from ' + str(bpe) if bpe else 'not found: pass --tokenizer DIR with encoder.json and vocab.bpe'})")
    return hf
