"""model/generation.py and generate.py: sampling with a KV cache equals sampling without."""

import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig
from model.generation import generate
from tests.conftest import ROOT, triton_device

TINY = dict(n_layer=2, n_head=2, n_embd=32, context=48)


def tiny(attention, dtype=torch.float32):
    torch.manual_seed(0)
    return GPT(GPTConfig(attention=attention, **TINY)).to(dtype)


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_greedy_with_cache_equals_without(attention):
    model = tiny(attention)
    idx = torch.randint(0, 50257, (2, 7))
    cached, timing = generate(model, idx, 20, temperature=0)
    plain, _ = generate(model, idx, 20, temperature=0, cache=False)
    assert cached.shape == (2, 27) and torch.equal(cached, plain)
    assert torch.equal(cached[:, :7], idx) and timing["decode_tokens_per_s"] > 0


@triton_device
def test_greedy_with_cache_equals_without_through_our_kernel():
    """Prefill (N_q = N_k) and decode (N_q = 1 against the cache) through flash, fp16 (the
    interpreter's dtype); the cached logits match the recomputed ones."""
    model = tiny("flash", torch.float16).to("cuda" if torch.cuda.is_available() else "cpu")
    idx = torch.randint(0, 50257, (1, 5), device=model.lm_head.weight.device)
    cached, _ = generate(model, idx, 6, temperature=0)
    plain, _ = generate(model, idx, 6, temperature=0, cache=False)
    assert torch.equal(cached, plain)


def test_sampling_is_seeded_and_top_k_bounded():
    model = tiny("sdpa")
    idx = torch.zeros(3, 1, dtype=torch.long)
    a, _ = generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    b, _ = generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # top_k=1 is greedy whatever the temperature
    g, _ = generate(model, idx, 10, temperature=0)
    k1, _ = generate(model, idx, 10, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(g, k1)


def test_too_long_is_one_clear_error():
    with pytest.raises(ValueError, match=r"prompt \(40 tokens\) \+ max_new_tokens \(20\) exceed the model's context of 48"):
        generate(tiny("sdpa"), torch.zeros(1, 40, dtype=torch.long), 20)


def test_generate_command(tiny_run):
    cmd = [sys.executable, "generate.py", f"init_from={tiny_run}", "prompt=The meaning of life is",
           "max_new_tokens=8", "temperature=0", "attention=sdpa", "device=cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "The meaning of life is" in r.stdout and "decode" in r.stdout and "tokens/s" in r.stdout
    r2 = subprocess.run(cmd + ["cache=false"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = lambda out: out.split("-" * 80)[1]  # noqa: E731
    assert text(r2.stdout) == text(r.stdout)  # greedy: the same text with and without the cache


@pytest.mark.parametrize("attention", ["naive", "sdpa", pytest.param("flash", marks=triton_device)])
def test_sliding_window_model_generates_with_its_cache(attention):
    """model.window: a window as long as the context changes nothing; a short one changes the
    logits, and decoding with the KV cache (one query against the cache, bottom-right aligned)
    gives the tokens a full recomputation gives."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if attention == "flash" else torch.float32
    torch.manual_seed(0)
    full = GPT(GPTConfig(attention=attention, **TINY)).to(device, dtype).eval()
    wide = GPT(GPTConfig(attention=attention, window=TINY["context"], **TINY)).to(device, dtype).eval()
    short = GPT(GPTConfig(attention=attention, window=3, **TINY)).to(device, dtype).eval()
    wide.load_state_dict(full.state_dict())
    short.load_state_dict(full.state_dict())
    idx = torch.randint(0, 50257, (1, 12), device=device)
    with torch.no_grad():
        torch.testing.assert_close(wide(idx), full(idx), rtol=0, atol=0)
        assert not torch.allclose(short(idx), full(idx))
    cached, _ = generate(short, idx[:, :5], 6, temperature=0)
    plain, _ = generate(short, idx[:, :5], 6, temperature=0, cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("attention", ["naive", "sdpa", pytest.param("flash", marks=triton_device)])
def test_document_masked_model_keeps_documents_apart_and_decodes_with_its_cache(attention):
    """model.documents: the logits of a document do not depend on the one before it (each ends
    with <|endoftext|>); without the mask they do; decoding with the KV cache across a document
    boundary gives the tokens a full recomputation gives."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if attention == "flash" else torch.float32
    torch.manual_seed(0)
    docs = GPT(GPTConfig(attention=attention, documents=True, **TINY)).to(device, dtype).eval()
    plain_model = GPT(GPTConfig(attention=attention, **TINY)).to(device, dtype).eval()
    plain_model.load_state_dict(docs.state_dict())
    eot = docs.cfg.eot
    a, b = torch.randint(0, 50000, (1, 6), device=device), torch.randint(0, 50000, (1, 9), device=device)
    other = torch.randint(0, 50000, (1, 6), device=device)
    x1 = torch.cat([a, torch.full((1, 1), eot, device=device), b], 1)
    x2 = torch.cat([other, torch.full((1, 1), eot, device=device), b], 1)
    with torch.no_grad():
        torch.testing.assert_close(docs(x1)[:, 7:], docs(x2)[:, 7:], rtol=0, atol=0)
        assert not torch.allclose(plain_model(x1)[:, 7:], plain_model(x2)[:, 7:])
    cached, _ = generate(docs, x1[:, :9], 5, temperature=0)
    plain, _ = generate(docs, x1[:, :9], 5, temperature=0, cache=False)
    assert torch.equal(cached, plain)
