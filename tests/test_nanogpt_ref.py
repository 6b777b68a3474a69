"""benchmarks/nanogpt_ref.py, the baseline of the training-speed comparisons: the same network
as ours (model/gpt.py), so that tokens/s compare implementations, not models."""

import torch

from benchmarks.nanogpt_ref import NanoGPT
from model.gpt import GPT, GPTConfig

# Ours' parameter name -> the reference's, per block and outside the blocks.
BLOCK_NAMES = {"ln_1": "ln_1", "attn.c_attn": "c_attn", "attn.c_proj": "attn_proj", "ln_2": "ln_2",
               "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp_proj"}


def reference_name(name):
    name = name.removeprefix("transformer.")
    if name.startswith("h."):
        _, layer, rest = name.split(".", 2)
        module, _, kind = rest.rpartition(".")
        return f"h.{layer}.{BLOCK_NAMES[module]}.{kind}"
    return name


def test_the_reference_is_our_network_with_the_same_weights():
    """With ours' weights copied in (both pad the vocabulary to 50304 and tie the head; ours told
    so, with no padding of its own), the reference gives ours' loss and gradients; the parameter
    counts match at GPT-2 small's dims."""
    torch.manual_seed(0)
    dims = dict(n_layer=2, n_head=2, n_embd=32)
    ours = GPT(GPTConfig(**dims, context=16, vocab_size=50304, cross_entropy="plain", attention="sdpa"))
    ref = NanoGPT(16, **dims, vocab_size=50304)
    with torch.no_grad():  # weights far from the initial 0.02, where GELU's forms and the like differ visibly
        for p in ours.parameters():
            p.normal_(std=0.5)
    names = {reference_name(n): p for n, p in ours.named_parameters()}
    assert names.keys() == dict(ref.named_parameters()).keys()
    ref.load_state_dict({n: p.detach() for n, p in names.items()}, strict=False)  # lm_head: tied to wte
    assert torch.equal(ref.lm_head.weight, ours.lm_head.weight)
    idx, targets = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    loss, loss_ref = ours(idx, targets), ref(idx, targets)
    torch.testing.assert_close(loss_ref, loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    loss_ref.backward()
    grads = dict(ref.named_parameters())
    for name, p in names.items():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)

    with torch.device("meta"):  # GPT-2 small: count without allocating
        counts = [sum(p.numel() for p in m.parameters()) for m in (GPT(GPTConfig()), NanoGPT(1024))]
    assert counts[0] == counts[1]
