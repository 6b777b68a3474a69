"""training/loop.py: the schedule, resuming with changed values, the pinned losses of a short run."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import losses, read_metrics, train_py
from training.loop import lr_at

# gpt2-tiny, context 64, 1K tokens a step, seed 1337 on the OpenWebText sample (tests/conftest.py
# SMALL), 8 steps: the losses of the tree before training/ owned the loop (bbc803f), which
# the loop must keep.
PINNED = [10.821783, 10.785958, 10.727312, 10.62302, 10.539976, 10.394032, 10.277202, 10.056931]
PINNED_VAL = 10.080582737922668


def test_a_short_run_keeps_its_pinned_losses(tmp_path, shared_data):
    r = train_py(tmp_path / "run", tmp_path / "cache", "train.max_steps=8", "train.eval_every=8")
    assert r.returncode == 0, r.stderr[-3000:]
    got = losses(tmp_path / "run")
    assert [got[s] for s in range(1, 9)] == pytest.approx(PINNED, rel=1e-5)
    assert losses(tmp_path / "run", "val/loss")[8] == pytest.approx(PINNED_VAL, rel=1e-6)
    assert "float32 on cpu" in r.stdout and "cross-entropy upcast" in r.stdout  # what the run uses


@pytest.mark.parametrize("warmup,max_steps", [(5, 30), (1, 10), (0, 10), (200, 5000)])
def test_lr_at_is_the_warmup_and_cosine_torch_schedulers_give(warmup, max_steps):
    t = OmegaConf.create({"lr": 6e-4, "min_lr": 6e-5, "warmup_steps": warmup, "max_steps": max_steps})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_steps - warmup), eta_min=t.min_lr)
    sched = decay if warmup == 0 else torch.optim.lr_scheduler.SequentialLR(
        opt, [torch.optim.lr_scheduler.LinearLR(opt, 1.0 / warmup, total_iters=warmup), decay], milestones=[warmup])
    for step in range(max_steps):
        assert lr_at(step, t) == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-12), step
        opt.step()
        sched.step()
    assert lr_at(max_steps, t) == lr_at(10 * max_steps, t) == t.min_lr  # no second cosine past the end


def test_resume_keeps_the_checkpoints_schedule_unless_told(tmp_path, shared_data):
    run = tmp_path / "run"
    assert train_py(run, tmp_path / "cache", "train.max_steps=6", "train.eval_every=6").returncode == 0
    for override, key in (("train.max_steps=12", "train.max_steps"), ("train.lr=1e-2", "train.lr"),
                          ("train.warmup_steps=1", "train.warmup_steps"), ("train.batch_tokens=2048", "train.batch_tokens")):
        r = train_py(run, tmp_path / "cache", "train.max_steps=6", "train.eval_every=6", override, "train.resume=true")
        assert r.returncode == 2 and f"{key} is " in r.stderr and "train.allow_changes=[" in r.stderr, r.stderr
    r = train_py(run, tmp_path / "cache", "train.max_steps=6", "train.resume=true")
    assert r.returncode == 0 and "already finished: step 6 of train.max_steps=6" in r.stdout
    # Allowed: the new max_steps from step 6 on, no second warm-up.
    r = train_py(run, tmp_path / "cache", "train.max_steps=12", "train.eval_every=6", "train.resume=true",
                 "train.allow_changes=[max_steps]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resume: train.max_steps 6 -> 12 (train.allow_changes)" in r.stdout
    lrs = {m["step"]: m["lr"] for m in read_metrics(run) if "lr" in m}
    t = OmegaConf.create({"lr": 3e-3, "min_lr": 6e-5, "warmup_steps": 5, "max_steps": 12})
    for step in range(7, 13):
        assert lrs[step] == pytest.approx(lr_at(step - 1, t))
    assert all(lrs[s + 1] <= lrs[s] for s in range(6, 12))
    assert not math.isnan(losses(run)[12])
