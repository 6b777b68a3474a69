"""Weights in and out of our GPT's layout: transformers' GPT-2 state dicts both ways, a
transformers folder or hub model read, and a state dict loaded into our model with its
vocabulary and position table adapted. (Which sources there are, our run directories among
them, is training/weights.py's.)

The architecture (layers, heads, width) must match the model's; a shorter position table is
extended (`positions`):
copy repeats the learned table (Longformer's initialisation, Beltagy et al. 2020: position
p gets row p mod n_old, so every window of the old length looks as in training), interpolate
stretches it linearly (position p gets the table at p (n_old - 1) / (n_new - 1), as ViT does
for a larger image; neighbouring positions stay close, but every position moves). A longer
table is cut to the model's context.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ARCH = ("n_layer", "n_head", "n_embd")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")
POSITIONS = ("copy", "interpolate")


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


def from_hf_state_dict(state_dict):
    """GPT2LMHeadModel's state dict -> ours (Conv1D weights transposed back, the causal-mask
    buffers older transformers saved dropped; vocabulary rows as they are)."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith(("attn.bias", "attn.masked_bias")) and t.dim() != 1:
            continue
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])
    return out


def read_hf(name, what=None):
    """(state dict in our layout, architecture dict, description) of a transformers GPT-2: a
    folder (config.json + weights) or a hub name."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ImportError("loading a transformers model needs the hf extra: pip install -e .[hf]") from None
    if Path(name).is_dir():
        model_type = json.loads((Path(name) / "config.json").read_text()).get("model_type")
        if model_type != "gpt2":
            raise ValueError(f"init_from: {name} holds a {model_type!r} model; only GPT-2 (model_type gpt2) fits")
    hf = GPT2LMHeadModel.from_pretrained(name)
    c = hf.config
    arch = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, context=c.n_positions)
    return from_hf_state_dict(hf.state_dict()), arch, what or name


def extend_positions(table, n, how):
    """A position table (n_old, C) -> (n, C): cut, or extended by copy or interpolate."""
    n_old = table.shape[0]
    if n <= n_old:
        return table[:n].clone()
    if how == "copy":
        return table[torch.arange(n) % n_old].clone()
    if how == "interpolate":
        return F.interpolate(table.t()[None].float(), size=n, mode="linear", align_corners=True)[0].t().to(table.dtype)
    raise ValueError(f"unknown position extension {how!r}: {' | '.join(POSITIONS)}")


def load_state(model, loaded, source, positions="copy"):
    """Loads `loaded` (state dict in our layout, architecture dict, description) into our GPT
    `model` of the same architecture: vocabulary rows padded to the model's, the position table
    cut or extended (`positions`). Returns a one-line account of what was loaded and adapted."""
    sd, arch, what = loaded
    cfg = model.cfg
    diffs = [f"{k} {arch[k]} (source) vs {getattr(cfg, k)} (model)" for k in ARCH if arch[k] != getattr(cfg, k)]
    if diffs:
        raise ValueError(f"init_from {source}: architecture differs: {'; '.join(diffs)}. "
                         "Pick the model config that matches (e.g. model=gpt2-small)")
    sd = dict(sd)
    notes = []
    for name in EMBEDDINGS:  # vocabulary rows: the source's real rows, our padding zero
        if name in sd:
            t = sd[name][:cfg.vocab_size]
            sd[name] = torch.cat([t, t.new_zeros(cfg.padded_vocab - t.shape[0], t.shape[1])])
    wpe = sd.get("transformer.wpe.weight")
    if wpe is not None and wpe.shape[0] != cfg.context:
        notes.append(f"positions {wpe.shape[0]} -> {cfg.context} "
                     f"({'cut' if wpe.shape[0] > cfg.context else positions})")
        sd["transformer.wpe.weight"] = extend_positions(wpe, cfg.context, positions)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"init_from {source}: weights do not fit the model: "
                         + "; ".join(f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                                     for label, items in (("missing", missing), ("unexpected", unexpected),
                                                          ("shape (source vs model)", wrong)) if items))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return f"weights from {what}" + (f", {', '.join(notes)}" if notes else "")
