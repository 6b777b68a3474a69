"""training/rundir.py: a run directory belongs to one run (real processes)."""

import hashlib
import os
import subprocess

import pytest

from tests.conftest import ROOT, read_metrics, train_cmd, train_py, wait_for_step
from training.config import UserError
from training.rundir import RunDirLock


def snapshot(run_dir):
    """Every file's bytes (links as their targets): what must survive a refused run."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file() and p.name != ".lock":
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_a_new_run_where_a_run_lives_is_refused_and_loses_nothing(tiny_run):
    before = snapshot(tiny_run)
    for overrides in ([], ["train.max_steps=5", "train.lr=1e-3"]):  # the same run again; a shorter, other one
        r = train_py(tiny_run, tiny_run.parent / "cache", *overrides)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"{tiny_run} already holds a run" in r.stderr and "train.resume=true" in r.stderr
        assert snapshot(tiny_run) == before


def test_two_live_runs_cannot_share_a_directory(tmp_path, shared_data):
    first = subprocess.Popen(train_cmd(tmp_path / "run", tmp_path / "cache", "train.max_steps=12"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "run", 2, first)
    second = train_py(tmp_path / "run", tmp_path / "cache", "train.max_steps=12", "train.resume=auto")
    assert second.returncode == 2 and f"another run is live in {tmp_path / 'run'} (pid {first.pid})" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    steps = [m["step"] for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    assert steps == list(range(1, 13))  # one run's rows, not two interleaved


def test_the_lock_is_exclusive_and_released(tmp_path):
    lock = RunDirLock(tmp_path)
    with pytest.raises(UserError, match=f"another run is live in {tmp_path} \\(pid {os.getpid()}\\)"):
        RunDirLock(tmp_path)
    lock.close()
    RunDirLock(tmp_path).close()
