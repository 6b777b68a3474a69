"""model/hf.py: transformers' GPT-2 behind our interface, started from our weights."""

import subprocess
import sys

import pytest
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from model.hf import HF_FLASH, register_flash
from training.weights import load_model
from tests.conftest import ROOT, triton_device

from model import GPT, GPTConfig
from model.hf import HFGPT

TINY = dict(n_layer=2, n_head=2, n_embd=32, context=16)


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_hf_model_starts_as_our_model(attention):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(attention=attention, **TINY))
    torch.manual_seed(0)
    hf = HFGPT(GPTConfig(attention=attention, **TINY))
    assert hf.hf.config._attn_implementation == {"naive": "eager", "sdpa": "sdpa"}[attention]
    idx = torch.randint(0, 50257, (2, 17))
    torch.testing.assert_close(hf(idx[:, :-1]), ours(idx[:, :-1]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hf(idx[:, :-1], idx[:, 1:]), ours(idx[:, :-1], idx[:, 1:]), rtol=1e-5, atol=1e-5)
    assert hf.num_params() == ours.num_params()
    assert hf.flops_per_token(16) == ours.flops_per_token(16)


def test_hf_model_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="attention=naive .*, attention=sdpa, or attention=flash .*, not 'flash1'"):
        HFGPT(GPTConfig(attention="flash1", **TINY))
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        HFGPT(GPTConfig(attention="naive", **TINY))(torch.zeros(1, 17, dtype=torch.long))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    r = subprocess.run([sys.executable, "-m", "training.weights", "export", str(tiny_run / "ckpt.pt"), str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_export_loads_in_transformers_with_equal_logits(tiny_run, exported):
    """fp32 logits of transformers' model equal ours within 1e-5 (the same math, other kernels)."""
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    hf = GPT2LMHeadModel.from_pretrained(exported)
    ours, _ = load_model(tiny_run, attention="naive")
    idx = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), rtol=1e-5, atol=1e-5)
    tok = GPT2TokenizerFast.from_pretrained(exported)
    assert tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's ids

    # ... and back: init_from a transformers folder gives our model the same logits again.
    again, account = load_model(exported, attention="naive")
    assert "transformers folder" in account
    with torch.no_grad():
        torch.testing.assert_close(again(idx), ours(idx), rtol=1e-6, atol=1e-6)


def test_export_refuses_what_is_not_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.weights", "export", str(tmp_path / "none.pt"), str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "neither a checkpoint" in r.stderr
    assert not (tmp_path / "o").exists()


@triton_device
def test_our_kernel_inside_transformers(exported):
    """attn_implementation=HF_FLASH runs our Triton kernel: logits match transformers' eager
    attention, and its own generate() (KV cache, one-token decode) picks the same tokens. fp16:
    the interpreter's dtype."""
    register_flash()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = GPT2LMHeadModel.from_pretrained(exported, attn_implementation=HF_FLASH, dtype=torch.float16).to(device)
    eager = GPT2LMHeadModel.from_pretrained(exported, attn_implementation="eager", dtype=torch.float16).to(device)
    assert ours.config._attn_implementation == HF_FLASH
    idx = torch.randint(0, 50257, (2, 24), device=device)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits.float(), eager(idx).logits.float(), rtol=2e-2, atol=2e-2)
    a = ours.generate(idx[:1, :6], max_new_tokens=6, do_sample=False)
    b = eager.generate(idx[:1, :6], max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no padding mask"):
        ours(idx, attention_mask=torch.tensor([[0] * 4 + [1] * 20, [1] * 24], device=device))
