import pytest
import torch

from model import GPT, GPTConfig, peak_flops
from tests.conftest import GPU, triton_device


def test_gpt2_small_parameter_count():
    assert GPT(GPTConfig()).num_params() == 124_439_808


def test_context_longer_than_positions_is_one_clear_error():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, context=16, vocab_size=100))
    with pytest.raises(ValueError, match="sequence length 17 exceeds the model's context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tied_embeddings_and_scaled_residual_init():
    model = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=64, vocab_size=1000))
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / 4) < 0.002  # 0.02 / sqrt(2 * 8)


def test_backends_give_the_same_model_output():
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, context=24, vocab_size=100)
    naive, sdpa = GPT(GPTConfig(attention="naive", **cfg)), GPT(GPTConfig(attention="sdpa", **cfg))
    sdpa.load_state_dict(naive.state_dict())
    idx = torch.randint(0, 100, (2, 24))
    l1 = naive(idx, idx)
    l2 = sdpa(idx, idx)
    torch.testing.assert_close(l1, l2)


def test_flops_and_peak_table():
    model = GPT(GPTConfig())
    n = model.num_params(non_embedding=True)
    assert model.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("Some Future GPU") is None  # no made-up peak


def test_vocabulary_padding_changes_nothing_learned():
    """Padded to a multiple of 128: the same model for a seed (real rows), padding rows zero and
    never trained, logits and loss over the 50,257 real tokens only."""
    models = []
    for multiple in (1, 128):
        torch.manual_seed(0)
        models.append(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, context=16, vocab_multiple=multiple,
                                    attention="naive")))
    plain, padded = models
    assert (plain.cfg.padded_vocab, padded.cfg.padded_vocab) == (50257, 50304)
    assert padded.num_params() == plain.num_params()
    for (name, p), q in zip(plain.named_parameters(), padded.parameters()):
        assert torch.equal(p, q[:p.shape[0]]), name
    assert not padded.lm_head.weight[50257:].any()
    idx = torch.randint(0, 50257, (2, 17))
    assert padded(idx[:, :-1]).shape == (2, 16, 50257)
    losses = [m(idx[:, :-1], idx[:, 1:]) for m in models]
    # The two matmul shapes (50257 vs 50304 rows) may take different CPU kernels (blocking,
    # summation order): equal within fp32 rounding, not bit for bit, on every CPU.
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), padded.parameters()):
        torch.testing.assert_close(p.grad, q.grad[:p.shape[0]], rtol=1e-5, atol=1e-6, msg=name)
    assert not padded.lm_head.weight.grad[50257:].any()


@triton_device
def test_packed_qkv_changes_nothing_learned():
    """model.qkv_packed: our kernel on the projection's output whole, or on q, k, v apart: the
    same loss and the same gradients, bit for bit."""
    device = "cuda" if GPU else "cpu"
    cfg = dict(n_layer=2, n_head=2, n_embd=32, context=16, vocab_size=100, attention="flash", cross_entropy="upcast")
    models = [GPT(GPTConfig(qkv_packed=packed, **cfg)).to(device, torch.float16) for packed in (True, False)]
    models[1].load_state_dict(models[0].state_dict())
    idx = torch.randint(0, 100, (2, 17), device=device)
    losses = [m(idx[:, :-1], idx[:, 1:]) for m in models]
    assert torch.equal(*losses)
    for loss in losses:
        loss.backward()
    assert [m.transformer.h[0].attn.attn_packed is not None for m in models] == [True, False]
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("attention", ["naive", pytest.param("flash", marks=triton_device)])
def test_block_sparse_model_attends_to_its_layouts_tiles(attention):
    """model.block_sparse=butterfly: a context within one tile is dense attention (the same
    logits); over four tiles the butterfly drops tiles (3, 0) and (2, 1), which changes the
    logits of the rows they held and no row before them; a KV cache is refused in one error."""
    from model.generation import generate
    device, dtype, block = ("cuda", torch.float16, 128) if GPU else ("cpu", torch.float16 if attention == "flash"
                                                                      else torch.float32, 16)
    tiny = dict(n_layer=2, n_head=2, n_embd=32, context=4 * block, attention=attention)
    torch.manual_seed(0)
    dense = GPT(GPTConfig(**tiny)).to(device, dtype).eval()
    sparse = GPT(GPTConfig(block_sparse="butterfly", sparse_block=block, **tiny)).to(device, dtype).eval()
    sparse.load_state_dict(dense.state_dict())
    idx = torch.randint(0, 50257, (1, 4 * block), device=device)
    with torch.no_grad():
        torch.testing.assert_close(sparse(idx[:, :block]), dense(idx[:, :block]), rtol=0, atol=0)
        a, b = sparse(idx), dense(idx)
        kept = (a[:, :2 * block] - b[:, :2 * block]).abs().amax()  # tile rows 0-1: every tile kept
        held = (a[:, 2 * block:] - b[:, 2 * block:]).abs().amax(-1)  # each position of tile rows 2-3
        assert kept <= 2e-2, kept
        # every row that lost a tile changes, by more than rounding moves the kept rows (a small
        # random model's logits move by little, so a fixed tolerance could not tell them apart)
        assert (held > 4 * kept).all(), (kept, held.min())
    with pytest.raises(ValueError, match="generation with a KV cache is not supported"):
        generate(sparse, idx[:, :5], 2, temperature=0)
    with pytest.raises(ValueError, match="block_sparse='bands': the layouts are butterfly"):
        GPT(GPTConfig(block_sparse="bands", **tiny))
