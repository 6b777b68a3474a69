"""benchmarks/first_call.py: what one process's first call prints, the GPU stood in for (the
times come from a stand-in fwd_bwd; the GPU measures them)."""

import json
import sys

import pytest
import torch

from benchmarks import first_call


def test_each_line_splits_the_first_call_and_names_the_path(monkeypatch, capsys):
    monkeypatch.setattr(first_call.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(first_call.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(first_call.torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    real_randn = torch.randn
    monkeypatch.setattr(first_call.torch, "randn", lambda *s, device=None, **kw: real_randn(*s, **kw))
    calls = iter([(3.0, 1.0), (0.001, 0.002), (0.5, 0.25), (0.001, 0.002)])
    order = []
    monkeypatch.setattr(first_call, "warm_torch", lambda: order.append("torch"))
    monkeypatch.setattr(first_call, "fwd_bwd", lambda *a: order.append("ours") or next(calls))
    monkeypatch.setenv("FLASH_GLUON", "0")
    monkeypatch.setattr(sys, "argv", ["first_call", "--shape", "2,128,2,16", "--lengths", "64"])
    try:
        first_call.main()
    finally:
        monkeypatch.delenv("FLASH_GLUON")
        first_call.flash.configure()  # the options back to their defaults for the tests after this one
    assert order[:2] == ["torch", "ours"]  # torch's own first backward is not timed as ours
    meta, *lines = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert meta["device"] == "a stand-in GPU" and meta["command"].startswith("FLASH_GLUON=0 python -m")
    assert [line["shape"] for line in lines] == [[2, 128, 2, 16], [4, 64, 2, 16]]  # the same tokens a batch
    assert lines[0]["first_s"] == pytest.approx(4.0) and lines[0]["first_fwd_s"] == 3.0 and lines[0]["first_bwd_s"] == 1.0
    assert lines[0]["second_s"] == pytest.approx(0.003) and lines[0]["gluon"] == "off"
