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


def test_naive_is_standard_attention_as_pytorch_users_write_it():
    """Scores in the inputs' dtype (bf16 here: tensor cores on a GPU), the softmax in fp32, P
    cast back: HF GPT-2's eager attention under autocast. The fp32 reference is another function."""
    from attention.naive import naive_attention, reference_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 33, 2, 16, generator=g).to(torch.bfloat16) for _ in range(3))
    s = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) * 0.25  # a bf16 matmul
    s = s.float().masked_fill(~causal_mask(33, 33, "cpu"), float("-inf"))
    expected = (torch.softmax(s, -1).to(torch.bfloat16) @ v.transpose(1, 2)).transpose(1, 2)
    o = naive_attention(q, k, v, causal=True)
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o, expected, rtol=0, atol=1e-2)
    ref = reference_attention(q.double(), k.double(), v.double(), causal=True)
    assert (o.double() - ref).abs().max() > (reference_attention(q, k, v, causal=True).double() - ref).abs().max()


@pytest.mark.parametrize("n_q,n_k", [(37, 37), (13, 37)])
def test_sdpa_window_equals_naive_window(n_q, n_k):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, dtype=torch.float64) for n in (n_q, n_k, n_k))
    o = get_attention("sdpa")(q, k, v, causal=True, window=5)
    torch.testing.assert_close(o, get_attention("naive")(q, k, v, causal=True, window=5), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(o, get_attention("naive")(q, k, v, causal=True))
    with pytest.raises(ValueError, match="a sliding window is causal"):
        get_attention("sdpa")(q, k, v, window=5)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_padding_documents_are_a_key_padding_mask(backend):
    """Key padding through documents, without causal: each real token attends to the real
    tokens of its row only, as softmax over the unpadded keys alone gives."""
    from attention import padding_documents
    torch.manual_seed(0)
    lengths = [9, 16, 1]
    q, k, v = (torch.randn(3, 16, 2, 8, dtype=torch.float64) for _ in range(3))
    o = get_attention(backend)(q, k, v, documents=padding_documents(torch.tensor(lengths), 16))
    for b, n in enumerate(lengths):
        alone = get_attention("naive")(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n])
        torch.testing.assert_close(o[b:b + 1, :n], alone, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="lengths must be a 1-d tensor of lengths in 1..16"):
        padding_documents(torch.tensor([0, 3]), 16)
