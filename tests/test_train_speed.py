"""benchmarks/train_speed.py without a GPU: every variant's overrides compose, kernels fall in the
right category, and the tables draw from rows (here synthetic) with paired per-round ratios."""

import subprocess
import sys

import pytest
import torch

from benchmarks import train_speed
from tests.conftest import ROOT


@pytest.mark.parametrize("name", [n for n, (kind, *_) in train_speed.VARIANTS.items() if kind == "ours"])
def test_our_variants_compose(name):
    _, overrides, *_ = train_speed.VARIANTS[name]
    cfg = train_speed.compose(["context=1024", *overrides])
    assert cfg.context == 1024


@pytest.mark.parametrize("kernel,cat", [
    ("flash2_bwd_dkdv_kernel", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16", "attention"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("softmax_xent_grad_kernel", "cross-entropy"),
    ("triton_per_fused__to_copy_add_native_layer_norm_backward_view_8", "other"),  # not the clip's norm
    ("void at::native::lpnorm_cleanup<float>", "optimizer"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_poi_fused_gelu_view_10", "other"),
])
def test_kernel_categories(kernel, cat):
    assert train_speed.category(kernel) == cat


def row(variant, rounds, command="run-a", **extra):
    return {"variant": variant, "context": 1024, "batch_tokens": 16384, "tokens_per_s": sorted(rounds)[len(rounds) // 2],
            "tokens_per_s_rounds": rounds, "command": command, "date": "2026-11-23", "peak_mem_gb": 8.0,
            "step_ms": 36.0, "sm_clock_mhz": 1800.0, "gpu_lead_ms": 40.0, "steps_gpu_caught_up": 0.0, "gpu_busy": 0.98, "setting": variant,
            "gpu_ms_by_category": {"attention": 5.0, "matmul": 17.0}, "attention_kernels": ["flash2_fwd_kernel"], **extra}


def test_ratio_pairs_rounds_of_one_run_only():
    ours, ref = row("flash", [100.0, 110.0, 90.0]), row("nanogpt", [100.0, 100.0, 100.0])
    value, spread = train_speed.ratio(ours, ref)
    assert value == pytest.approx(1.0) and spread == "(0.90-1.10)"
    assert train_speed.ratio(ours, row("nanogpt", [100.0] * 3, command="run-b"))[1] == ""  # other run: no pairs
    assert train_speed.ratio(ours, None)[1] == ""


def test_markdown_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    oom = {"variant": "hf-eager-attn", "context": 1024, "batch_tokens": 16384, "error": "OOM", "command": "run-hf"}
    rows = [row("nanogpt", [100e3, 102e3, 98e3]), row("nanogpt-sdpa-flash", [95e3, 96e3, 94e3]),
            row("flash", [105e3, 104e3, 106e3]), row("hf-eager", [30e3], command="run-hf"), oom,
            {**row("flash-cudagraphs", [106e3] * 3), "peak_mem_gb": None}]  # no peak under CUDA graphs
    text = train_speed.markdown(rows, {"device": "GPU", "torch": "2", "triton": "3"})
    line = next(x for x in text.splitlines() if x.startswith("| flash |"))
    assert "| 1.05x (1.02-1.08) | 1.11x (1.08-1.13) |" in line and "3.5x" in line and "1800" in line
    assert "| hf-eager-attn | OOM |" in text
    table = [x for x in text.splitlines() if x.startswith("|")]
    assert len({x.count("|") for x in table}) == 1  # every row has the header's columns
    train_speed.plot(rows, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 5_000


def test_masked_variants_get_no_mfu_and_a_run_without_references_no_ratios(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    rows = train_speed.add_mfu([row("flash", [400e3] * 3), row("flash-window1k", [800e3] * 3), row("flash-butterfly", [900e3] * 3)])
    assert 0 < rows[0]["mfu"] < 1 and "mfu" not in rows[1] and "mfu" not in rows[2]
    text = train_speed.markdown(rows, {"device": "GPU", "torch": "2", "triton": "3"})
    line = next(x for x in text.splitlines() if x.startswith("| flash-window1k |"))
    assert "nanx" not in text and [c.strip() for c in line.split("|")[3:7]] == ["", "", "", ""]


def test_compiled_variants_are_timed_together_and_hf_alone():
    names = ["flash", "hf-eager", "nanogpt", "hf-eager-attn-mb4k", "flash-eager"]
    assert train_speed.groups(names) == [["flash", "nanogpt", "flash-eager"], ["hf-eager"], ["hf-eager-attn-mb4k"]]
    assert train_speed.groups(["hf-eager"]) == [["hf-eager"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_without_a_gpu_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "measures training on a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    # issue 25's command as written (no --out: runs/train_speed) reaches the same message
    r = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--variants", "flash,nanogpt"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "measures training on a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
