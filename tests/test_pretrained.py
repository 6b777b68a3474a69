"""model/pretrained.py: weights in and out of our GPT's layout (transformers' state dicts, positions)."""

import pytest
import torch

from model import GPT, GPTConfig
from model.pretrained import extend_positions, from_hf_state_dict, to_hf_state_dict

TINY = dict(n_layer=2, n_head=2, n_embd=32, context=16, attention="naive")


def test_hf_layout_round_trip():
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**TINY)).state_dict()
    hf = to_hf_state_dict(ours, 50257)
    assert hf["transformer.wte.weight"].shape[0] == 50257  # padding rows never leave the model
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    back = from_hf_state_dict(hf)
    for name, t in back.items():
        torch.testing.assert_close(t, ours[name][:t.shape[0]], rtol=0, atol=0)


def test_position_table_extension():
    table = torch.arange(8.0)[:, None].repeat(1, 3)
    copy = extend_positions(table, 20, "copy")
    assert copy[:, 0].tolist() == [float(i % 8) for i in range(20)]
    interp = extend_positions(table, 15, "interpolate")
    assert interp[0, 0] == 0 and interp[-1, 0] == 7 and torch.allclose(interp[:, 0], torch.linspace(0, 7, 15))
    assert extend_positions(table, 4, "copy").tolist() == table[:4].tolist()
    with pytest.raises(ValueError, match="unknown position extension 'rope'"):
        extend_positions(table, 20, "rope")
