"""Sampling from our GPT with a KV cache: one prefill pass over the prompt, then one token per
step, each attending to the cached keys and values through the model's attention backend
(bottom-right causal masking, so the new token sees the whole cache)."""

import time
from contextlib import nullcontext

import torch

from model.gpt import KVCache


def next_token(logits, temperature, top_k, generator):
    """(B, vocab) fp32 logits -> (B, 1) token ids. temperature 0: greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, cache=True, generator=None,
             autocast=nullcontext()):
    """Continue each row of idx (B, T) by max_new_tokens tokens; returns (tokens (B, T + new),
    timings: prefill seconds and decode tokens per second). Without the cache every step runs
    the whole sequence again (the reference the cache must match)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if idx.shape[1] + max_new_tokens > model.cfg.context:
        raise ValueError(f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's "
                         f"context of {model.cfg.context} positions")
    was_training = model.training
    model.eval()
    kv = None
    if cache:  # in the dtype the projections produce: autocast's, or the weights'
        dev = idx.device.type
        with autocast:
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else model.lm_head.weight.dtype
        kv = KVCache(model.cfg, idx.shape[0], idx.shape[1] + max_new_tokens, idx.device, dtype)
    out, x = idx, idx
    sync = torch.cuda.synchronize if idx.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    prefill_s = None
    for _ in range(max_new_tokens):
        with autocast:
            logits = model(x, cache=kv)[:, -1].float()
        token = next_token(logits, temperature, top_k, generator)
        out = torch.cat([out, token], dim=1)
        x = token if cache else out
        if prefill_s is None:
            sync()
            prefill_s, t1 = time.perf_counter() - t0, time.perf_counter()
    sync()
    decode = max_new_tokens - 1
    rate = decode * idx.shape[0] / (time.perf_counter() - t1) if decode > 0 else float("nan")
    model.train(was_training)
    return out, {"prefill_s": prefill_s, "decode_tokens_per_s": rate}
