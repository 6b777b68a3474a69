"""Shared test setup: offline tokenizer and data from ../shared, one device choice."""

import os
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
