"""benchmarks/scaling.py at 2 ranks on the CPU (gloo), the paper's fixed global batch with the
accumulation derived; benchmarks/budget.py's days from scaling files, old and new."""

import json

import pytest

from benchmarks import budget, scaling


def test_two_ranks_hold_the_global_batch_and_derive_the_accumulation(tmp_path, shared_data):
    out = tmp_path / "out"
    scaling.main([str(out), "--device", "cpu", "--gpus", "2", "--contexts", "64", "--model", "gpt2-tiny",
                  "--batch-tokens", "1024", "--micro-batch-tokens", "256",
                  "--set", "data=owt-sample", "attention=sdpa", "train.max_steps=4", "train.log_every=1",
                  "train.eval_tokens=1024", f"data.cache_dir={tmp_path / 'cache'}", "wandb.mode=disabled"])
    result = json.loads((out / "scaling.json").read_text())
    rows = {r["gpus"]: r for r in result["rows"]}
    assert rows[1]["micro_batches_per_gpu"] == 4 and rows[2]["micro_batches_per_gpu"] == 2   # 1024 tokens a step both
    assert rows[1]["batch_tokens"] == rows[2]["batch_tokens"] == 1024
    assert rows[1]["efficiency"] == 1.0 and rows[2]["efficiency"] == pytest.approx(
        rows[2]["tokens_per_s"] / (2 * rows[1]["tokens_per_s"]))
    assert result["meta"]["model"] == "gpt2-tiny" and result["meta"]["batch_tokens"] == 1024
    log = (out / "runs/ctx64-2gpu/train.log").read_text()
    assert "2 ranks (ddp) x 4 x 64 tokens x 2 micro-batches per step" in log
    assert (out / "scaling.png").stat().st_size > 0 and "| 64 | 2 | 2 |" in (out / "scaling.md").read_text()


def test_a_batch_the_ranks_cannot_split_is_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="not a whole number of 16384-token micro-batches on each of 3 GPUs"):
        scaling.main([str(tmp_path), "--device", "cpu", "--gpus", "2", "3", "--batch-tokens", "524288"])
    assert not (tmp_path / "runs").exists()


def test_budget_days_from_the_largest_world_size(tmp_path):
    new = {"meta": {"device": "up to 8 x NVIDIA H200", "date": "2026-12-07", "model": "gpt2-small", "parallel": "ddp",
                    "micro_batch_tokens": 16384, "batch_tokens": 524288, "micro_batches_per_gpu": None},
           "rows": [{"context": c, "gpus": g, "batch_tokens": 524288, "tokens_per_s": rate, "efficiency": e}
                    for c, g, rate, e in ((1024, 1, 5e5, 1.0), (1024, 8, 3.6e6, 0.9), (4096, 1, 4e5, 1.0))]}
    old = {"meta": {"device": "2 x NVIDIA H200", "date": "2026-11-22", "parallel": "ddp", "per_gpu_tokens_per_step": 16384},
           "results": [{"context": 2048, "gpus": 2, "tokens_per_s": 8e5, "efficiency": 0.93}]}
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    b = budget.budget([tmp_path / "new.json", tmp_path / "old.json"])
    tokens = 400_000 * 524_288
    rows = {(r["context"], r["gpus"]): r for r in b["rows"]}
    assert set(rows) == {(1024, 8), (2048, 2), (4096, 1)}   # the largest world size measured at each context
    assert rows[(1024, 8)]["days"] == pytest.approx(tokens / 3.6e6 / 86400)
    assert rows[(1024, 8)]["paper_over_ours"] == pytest.approx(2.7 / rows[(1024, 8)]["days"])
    assert rows[(1024, 8)]["paper_baselines_days"] == {"HuggingFace": 9.5, "Megatron-LM": 4.7}
    assert rows[(2048, 2)]["batch_tokens"] == 32768 and rows[(2048, 2)]["paper_days"] == 3.0   # weak scaling: 2 x 16K
    assert b["missing"] == ["Table 2 gpt2-medium 1024"]
    text = budget.markdown(b)
    assert "| Tables 2, 4 | gpt2-small | 1024 | 2.7 days; HuggingFace 9.5; Megatron-LM 4.7 | 8 x NVIDIA H200, ddp, " \
           "524,288 tokens a step | 3,600,000 | 0.67 | 4.00x |" in text
    assert "No measured rate for: Table 2 gpt2-medium 1024." in text
