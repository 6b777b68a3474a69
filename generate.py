"""Sample from a trained model with a KV cache.

    python generate.py init_from=runs/RUN prompt="The meaning of life is" max_new_tokens=64 \
        temperature=0.8 top_k=50 seed=1
    python generate.py init_from=hf:gpt2 attention=sdpa temperature=0     # greedy, transformers' weights

Prints each sample and the speed: prompt prefill time and decode tokens/s (one token per step,
attending to the cache through the chosen attention backend).
"""

import os
from contextlib import nullcontext

import hydra
import tiktoken
import torch

if not torch.cuda.is_available():  # our kernels then run in Triton's CPU interpreter (slow, fp16)
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from model.generation import generate
from training.weights import load_model


def run(cfg):
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA GPU is visible; use device=cpu")
    source = cfg.init_from if str(cfg.init_from).startswith("hf:") else to_absolute_path(os.path.expanduser(cfg.init_from))
    attention = cfg.attention.name
    model, loaded = load_model(source, attention, OmegaConf.to_container(cfg.attention.options))
    enc = tiktoken.get_encoding("gpt2")
    prompt = enc.encode(cfg.prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    on_cuda = device.startswith("cuda")
    dtype = getattr(torch, cfg.dtype)
    if on_cuda:
        model.to(device)
        autocast = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else nullcontext()
    else:  # the Triton interpreter runs our kernels in float16 only
        model.to(torch.float16 if attention.startswith("flash") else torch.float32)
        autocast = nullcontext()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    idx = torch.tensor([prompt] * cfg.num_samples, device=device)
    out, timing = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.cache, gen, autocast)
    print(f"{loaded} | {attention} attention | {'KV cache' if cfg.cache else 'no cache'} | {device}")
    for row in out.tolist():
        print("-" * 80)
        print(enc.decode(row))
    print("-" * 80)
    print(f"prefill {len(prompt)} tokens x {cfg.num_samples}: {1000 * timing['prefill_s']:.1f} ms | "
          f"decode {timing['decode_tokens_per_s']:,.1f} tokens/s")
    return out, timing


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig):
    run(cfg)


if __name__ == "__main__":
    main()
