"""model/hf.py: transformers' GPT-2 behind our interface, started from our weights."""

import pytest
import torch

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
    with pytest.raises(ValueError, match="attention=naive .* or attention=sdpa, not 'flash'"):
        HFGPT(GPTConfig(attention="flash", **TINY))
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        HFGPT(GPTConfig(attention="naive", **TINY))(torch.zeros(1, 17, dtype=torch.long))
