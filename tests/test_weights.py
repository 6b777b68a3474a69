"""training/weights.py: the sources of weights (our checkpoints and run directories, transformers folders) into our GPT."""

import pytest
import torch

from model import GPT, GPTConfig
from training.weights import load_into, load_model

TINY = dict(n_layer=2, n_head=2, n_embd=32, context=16, attention="naive")


def save_ckpt(model, path, **model_cfg):
    cfg = {"model": {"n_layer": model.cfg.n_layer, "n_head": model.cfg.n_head, "n_embd": model.cfg.n_embd,
                     "impl": "ours", **model_cfg}, "context": model.cfg.context}
    torch.save({"model": model.state_dict(), "config": cfg, "step": 7}, path)
    return path


def test_checkpoint_into_model_gives_equal_logits(tmp_path):
    torch.manual_seed(0)
    src = GPT(GPTConfig(**TINY))
    save_ckpt(src, tmp_path / "ckpt-00000007.pt")
    torch.manual_seed(1)
    dst = GPT(GPTConfig(**TINY, vocab_multiple=64))  # another padding: the real rows move, not the padding
    assert "step 7" in load_into(dst, tmp_path)  # the run directory finds its newest checkpoint
    idx = torch.randint(0, 50257, (2, 16))
    torch.testing.assert_close(dst(idx), src(idx), rtol=0, atol=0)


def test_longer_context_keeps_the_short_windows(tmp_path):
    torch.manual_seed(0)
    src = GPT(GPTConfig(**TINY))
    save_ckpt(src, tmp_path / "ckpt.pt")
    model, account = load_model(tmp_path / "ckpt.pt", attention="naive", context=64, positions="copy")
    assert model.cfg.context == 64 and "positions 16 -> 64 (copy)" in account
    idx = torch.randint(0, 50257, (1, 16))
    torch.testing.assert_close(model(idx), src(idx), rtol=0, atol=0)  # the first 16 positions are the old ones


def test_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    save_ckpt(GPT(GPTConfig(**TINY)), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"architecture differs: n_layer 2 \(source\) vs 3 \(model\)"):
        load_into(GPT(GPTConfig(**{**TINY, "n_layer": 3})), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"n_head 2 \(source\) vs 4 \(model\)"):
        load_into(GPT(GPTConfig(**{**TINY, "n_head": 4})), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"missing: .*c_attn.bias"):
        load_into(GPT(GPTConfig(**TINY, bias=True)), save_nobias(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_into(GPT(GPTConfig(**TINY)), tmp_path / "nothing")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint .*broken.pt is truncated or not a checkpoint"):
        load_into(GPT(GPTConfig(**TINY)), tmp_path / "broken.pt")


def save_nobias(tmp_path):
    torch.manual_seed(0)
    return save_ckpt(GPT(GPTConfig(**TINY, bias=False)), tmp_path / "nobias.pt")


def test_model_package_imports_nothing_of_training():
    """The arrow runs one way: training/ builds on model/, never the reverse (run directories and
    checkpoint keys are training/'s)."""
    from pathlib import Path
    import re
    for f in (Path(__file__).resolve().parents[1] / "model").glob("*.py"):
        assert not re.search(r"^\s*(from|import) training\b", f.read_text(), re.M), f.name
