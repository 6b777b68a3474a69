"""model/loss.py: the three cross-entropy paths compute the same loss and gradients."""

import pytest
import torch

from model.loss import IGNORE, cross_entropy
from tests.conftest import GPU, gpu_only, triton_device


def _grads(impl, h, w, t, vocab):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = cross_entropy(h, w, t, vocab, impl)
    (3.0 * loss).backward()  # a non-unit upstream gradient reaches both inputs
    return loss.detach(), h.grad, w.grad


@triton_device
@pytest.mark.parametrize("rows", [1, 37])
def test_fused_matches_upcast(rows):
    torch.manual_seed(rows)
    device = "cuda" if GPU else "cpu"
    vocab, padded, width = 50, 64, 16
    h, w = torch.randn(rows, width, device=device), torch.randn(padded, width, device=device)
    w[vocab:] = 0
    t = torch.randint(0, vocab, (rows,), device=device)
    if rows > 1:
        t[3] = IGNORE
    ref = _grads("upcast", h, w, t, vocab)
    for impl in ("fused", "plain"):
        out = _grads(impl, h, w, t, vocab)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert _grads("fused", h, w, t, vocab)[2][vocab:].abs().max() == 0  # padding rows learn nothing
    with torch.no_grad():  # evaluation: loss only
        torch.testing.assert_close(cross_entropy(h, w, t, vocab, "fused"), ref[0], rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown cross-entropy implementation 'fast'"):
        cross_entropy(torch.randn(2, 4), torch.randn(8, 4), torch.zeros(2, dtype=torch.long), 8, "fast")


@gpu_only
def test_fused_at_gpt2_size_under_autocast():
    """16K tokens x 50304 padded vocabulary in bf16: several chunks, the real kernel config."""
    torch.manual_seed(0)
    h = torch.randn(16384, 768, device="cuda")
    w = torch.randn(50304, 768, device="cuda") * 0.02
    w[50257:] = 0
    t = torch.randint(0, 50257, (16384,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = _grads("upcast", h, w, t, 50257)
        out = _grads("fused", h, w, t, 50257)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(out[1:], ref[1:]):
        assert (a - b).norm() / b.norm() < 1e-2  # bf16 operands
