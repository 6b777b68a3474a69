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


def train_py(run_dir, cache_dir, *overrides):
    """Run train.py in a subprocess; returns the CompletedProcess."""
    cmd = [sys.executable, "train.py", *SMALL, f"hydra.run.dir={run_dir}", f"data.cache_dir={cache_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


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
