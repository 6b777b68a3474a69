"""Shared test setup: offline tokenizer and data from ../shared, one device choice."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, our Triton kernels run in Triton's CPU interpreter (small shapes, slow).
# Set before any test imports the kernels: triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GPT2FLASH_SHARED", ROOT.parent / "shared"))
BPE_CACHE = SHARED / "data" / "gpt2-bpe" / "tiktoken_cache"
if BPE_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(BPE_CACHE))
os.environ.setdefault("WANDB_SILENT", "true")

GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Our Triton kernels run on a GPU, or on the CPU under TRITON_INTERPRET=1 (slow, small shapes).
triton_device = pytest.mark.skipif(not (GPU or INTERPRET), reason="needs a CUDA GPU or TRITON_INTERPRET=1")
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@pytest.fixture
def shared_data():
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


# train.py on the CPU at a few seconds a run: gpt2-tiny, context 64, 1K tokens a step.
SMALL = ["experiment=smoke", "train.batch_tokens=1024", "train.micro_batch_tokens=512", "context=64",
         "train.log_every=1", "train.eval_tokens=4096", "wandb.mode=offline"]


def train_cmd(run_dir, cache_dir, *overrides, nproc=1):
    """train.py's command line: plain, or under torchrun with nproc processes (gloo on the CPU)."""
    launch = [sys.executable, "train.py"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py"]
    return [*launch, *SMALL, f"hydra.run.dir={run_dir}", f"data.cache_dir={cache_dir}", *overrides]


def train_py(run_dir, cache_dir, *overrides, nproc=1):
    """Run train.py in a subprocess; returns the CompletedProcess."""
    return subprocess.run(train_cmd(run_dir, cache_dir, *overrides, nproc=nproc), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A gpt2-tiny run of 30 steps with its checkpoint, shared by the reuse tests."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED / 'data'}")
    base = tmp_path_factory.mktemp("tiny")
    r = train_py(base / "run", base / "cache", "train.max_steps=30", "train.ckpt_every=30", "train.eval_every=30")
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run"


# The run the distributed and preemption tests compare against: one process, 12 steps,
# checkpoints every 4 (the last two kept), evaluations at 6 and 12.
REFERENCE = ["train.max_steps=12", "train.ckpt_every=4", "train.eval_every=6"]


def losses(run_dir, key="train/loss"):
    """{step: value} from metrics.jsonl; a step logged twice (a resumed run) keeps its last row."""
    return {m["step"]: m[key] for m in read_metrics(run_dir) if key in m}


def assert_follows(run_dir, reference_dir, tol=0.0):
    """The run logged the reference's steps with the same train losses: exactly (tol 0: the
    same process count resumed), or within tol (other ranks: fp32 summation order)."""
    ref, run = losses(reference_dir), losses(run_dir)
    assert sorted(run) == sorted(ref)
    for step in ref:
        assert run[step] == ref[step] if tol == 0 else run[step] == pytest.approx(ref[step], abs=tol), step


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED / 'data'}")
    base = tmp_path_factory.mktemp("reference")
    r = train_py(base / "run", base / "cache", *REFERENCE)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run"


def wait_for_step(run_dir, step, proc, timeout=300):
    """Blocks until the run at run_dir has logged `step` (or fails if proc ends first)."""
    import time
    deadline = time.time() + timeout
    metrics = Path(run_dir) / "metrics.jsonl"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}")
        if metrics.is_file() and any(m.get("step", 0) >= step for m in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


def compiled_for_sm90(module, function, cases):
    """{case: function(*case)} from `module`, run in a process of its own without the
    interpreter (TRITON_INTERPRET=1 would hand Triton interpreted helpers): the kernels compiled
    for Hopper by Triton's NVIDIA backend and ptxas, no GPU needed."""
    code = (f"import json; from {module} import {function}; "
            f"print(json.dumps([{function}(*c) for c in {list(cases)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "0"},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(zip(cases, json.loads(out.stdout.strip().splitlines()[-1])))

