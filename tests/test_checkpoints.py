"""training/checkpoints.py: rotation, atomic writes, damaged files found and passed over."""

import shutil

import pytest
import torch

from tests.conftest import REFERENCE, assert_follows, train_py
from training import checkpoints


def test_save_keeps_the_newest_k(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoints.save(tmp_path, step, {"step": step}, keep=2)
    assert [s for s, _ in checkpoints.saved(tmp_path)] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000030.pt", "ckpt-00000040.pt", "ckpt.pt"]  # no .tmp left
    assert checkpoints.load(checkpoints.newest(tmp_path))["step"] == 40
    assert (tmp_path / "ckpt.pt").readlink().name == "ckpt-00000040.pt"  # relative: the run dir can move


def test_truncated_and_corrupt_files_are_named_and_passed_over(tmp_path, capsys):
    for step in (1, 2, 3):
        checkpoints.save(tmp_path, step, {"w": torch.arange(100_000.0)}, keep=3)
    two, three = tmp_path / "ckpt-00000002.pt", tmp_path / "ckpt-00000003.pt"
    three.write_bytes(three.read_bytes()[:100_000])  # truncated: a copy cut short, a full disk
    data = bytearray(two.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside the tensor data: torch.load alone would not notice
    two.write_bytes(data)
    assert "truncated" in checkpoints.problem(three) and "CRC mismatch" in checkpoints.problem(two)
    assert checkpoints.newest(tmp_path) == tmp_path / "ckpt-00000001.pt"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and str(three) in lines[0] and str(two) in lines[1]
    checkpoints.newest(tmp_path, set_aside=True)  # a resuming run moves them out of its way
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [
        "ckpt-00000001.pt", "ckpt-00000002.pt.corrupt", "ckpt-00000003.pt.corrupt"]
    (tmp_path / "ckpt-00000001.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no usable checkpoint"):
        checkpoints.newest(tmp_path)
    assert checkpoints.newest(tmp_path / "elsewhere") is None


def test_state_round_trip_by_parameter_name(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = make()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    model_state, opt_state = checkpoints.capture(model, opt)
    assert "0.weight" in opt_state["state"]  # keyed by name, not by position: any sharding maps onto it
    fresh, fresh_opt = make()
    checkpoints.restore({"model": model_state, "optimizer": opt_state}, fresh, fresh_opt)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b) and torch.equal(opt.state[a]["exp_avg"], fresh_opt.state[b]["exp_avg"])


def test_resume_passes_over_a_truncated_newest_checkpoint(tmp_path, reference_run):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    newest = run / "ckpt-00000012.pt"
    newest.write_bytes(newest.read_bytes()[:4096])
    r = train_py(run, tmp_path / "cache", *REFERENCE, "train.resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if "unusable" in line]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "truncated" in warnings[0]
    assert "resumed from" in r.stdout and "ckpt-00000008.pt at step 8" in r.stdout
    assert_follows(run, reference_run)
