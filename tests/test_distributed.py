"""training/distributed.py through torchrun on the CPU (gloo, fp32): 2 ranks follow 1 rank.

Every step draws its windows from the one generator all ranks share and splits them over the
ranks (data/batches.py), so 2 ranks x k micro-batches see what 1 rank sees: the curves agree
up to fp32 summation order, stated here as 1e-4 on the loss.
"""

import pytest

from tests.conftest import REFERENCE, assert_follows, losses, read_metrics, train_py

TOL = 1e-4


def test_ddp_two_ranks_with_accumulation_follow_one_rank(tmp_path, reference_run):
    # 2 ranks x 2 micro-batches of 256 tokens against 1 rank x 2 of 512: the same 1024-token step.
    r = train_py(tmp_path / "run", tmp_path / "cache", *REFERENCE, "train.micro_batch_tokens=256", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks (ddp) x 4 x 64 tokens x 2 micro-batches per step" in r.stdout
    assert_follows(tmp_path / "run", reference_run, TOL)
    assert losses(tmp_path / "run", "val/loss") == pytest.approx(losses(reference_run, "val/loss"), abs=TOL)
    # Rank 0 alone logs and writes: one row per step, one wandb run, one line per step printed.
    steps = [m["step"] for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    assert steps == list(range(1, 13))
    assert len(list((tmp_path / "run/wandb").glob("offline-run-*"))) == 1
    assert r.stdout.count("step 12/12 | loss") == 1


def test_fsdp_two_ranks_then_one_rank_from_its_checkpoint(tmp_path, reference_run):
    """FSDP2 at 2 ranks for 8 steps; its gathered checkpoint resumed by one plain process."""
    r = train_py(tmp_path / "run", tmp_path / "cache", *REFERENCE, "train.parallel=fsdp", "train.steps_per_run=8",
                 nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks (fsdp)" in r.stdout
    r = train_py(tmp_path / "run", tmp_path / "cache", *REFERENCE, "train.resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 8" in r.stdout
    assert_follows(tmp_path / "run", reference_run, TOL)


def test_global_batch_must_split_over_the_ranks():
    from omegaconf import OmegaConf

    from training.loop import batch_shape
    cfg = OmegaConf.create({"context": 64, "train": {"batch_tokens": 1024, "micro_batch_tokens": 512}})
    assert batch_shape(cfg, 1) == (8, 2) and batch_shape(cfg, 2) == (8, 1)
    with pytest.raises(ValueError, match="divide train.batch_tokens \\(1024\\) / 4 ranks"):
        batch_shape(cfg, 4)
