"""The registry and the naive / sdpa backends (no Triton needed)."""

import pytest
import torch

from attention import BACKENDS, get_attention
from attention.naive import causal_mask


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'.*naive, sdpa, flash, flash1"):
        get_attention("fast")
    assert set(BACKENDS) >= {"naive", "sdpa", "flash", "flash1"}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (13, 37), (1, 37)])
def test_naive_equals_sdpa_outputs_and_grads(causal, n_q, n_k):
    torch.manual_seed(0)
    q = torch.randn(2, n_q, 3, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, n_k, 3, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, n_k, 3, 16, dtype=torch.float64, requires_grad=True)
    do = torch.randn(2, n_q, 3, 16, dtype=torch.float64)
    outs = []
    for name in ("naive", "sdpa"):
        o = get_attention(name)(q, k, v, causal=causal, scale=0.3)
        outs.append((o, *torch.autograd.grad(o, (q, k, v), do)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_causal_mask_is_bottom_right_aligned():
    assert torch.equal(causal_mask(3, 3, "cpu"), torch.ones(3, 3, dtype=torch.bool).tril())
    assert causal_mask(1, 5, "cpu").all()  # one new query sees the whole cache


def test_sdpa_kernel_option():
    q = torch.randn(1, 8, 2, 16)
    o = get_attention("sdpa", kernel="math")(q, q, q, causal=True)
    torch.testing.assert_close(o, get_attention("naive")(q, q, q, causal=True), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown kernel 'fast'; available: flash, cudnn, efficient, math"):
        get_attention("sdpa", kernel="fast")(q, q, q)


def test_packed_call_of_a_backend_without_a_packed_kernel_unbinds():
    qkv = torch.randn(2, 9, 3, 2, 16, dtype=torch.float64)
    o = get_attention("sdpa", packed=True, kernel="math")(qkv, causal=True)
    torch.testing.assert_close(o, get_attention("naive")(*qkv.unbind(2), causal=True), rtol=1e-9, atol=1e-9)
