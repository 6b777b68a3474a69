"""End to end on the CPU: gpt2-tiny on the OpenWebText sample through train.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL, read_metrics, train_py

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *overrides):
    return train_py(tmp_path / "run", tmp_path / "cache", *overrides)


def metrics(tmp_path):
    return read_metrics(tmp_path / "run")


def test_train_checkpoint_resume(tmp_path, shared_data):
    r = run(tmp_path, "train.max_steps=30", "train.ckpt_every=20", "train.eval_every=15")
    assert r.returncode == 0, r.stderr[-3000:]
    full = {m["step"]: m for m in metrics(tmp_path) if "train/loss" in m}
    assert full[30]["train/loss"] < full[1]["train/loss"] - 1.0  # it learns
    for key in ("train/loss", "train/ppl", "lr", "grad_norm", "tokens_per_s", "step_ms", "tokens_seen"):
        assert key in full[30]
    evals = [m for m in metrics(tmp_path) if "val/loss" in m]
    assert [m["step"] for m in evals] == [15, 30] and "val/ppl" in evals[0]
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt-*.pt")) == ["ckpt-00000020.pt", "ckpt-00000030.pt"]
    runs = list((tmp_path / "run/wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))

    # The same run stopped at step 20, then resumed: steps 21..30 repeat the losses exactly.
    for f in (tmp_path / "run").glob("*"):  # a fresh directory: a new run is refused where one lives
        if f.is_file() or f.is_symlink():
            f.unlink()
    assert run(tmp_path, "train.max_steps=30", "train.steps_per_run=20", "train.eval_every=15").returncode == 0
    r = run(tmp_path, "train.max_steps=30", "train.ckpt_every=20", "train.eval_every=15", "train.resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 20" in r.stdout
    resumed = {m["step"]: m for m in metrics(tmp_path) if "train/loss" in m}
    for step in range(21, 31):
        assert resumed[step]["train/loss"] == full[step]["train/loss"], step


# (override, the one line it gets): checked in-process by training.config.check ...
CONFIG_ERRORS = [
    ("attention.name=fast", "attention.name='fast' is not one of: naive | sdpa | flash | flash1"),
    ("train.resume=maybe", "train.resume='maybe' is not one of: true | false | auto"),
    ("train.parallel=zero3", "train.parallel='zero3' is not one of: ddp | fsdp"),
    ("context=-128", "context=-128: a positive whole number is needed"),
    ("train.lr=-1", "train.lr=-1: a number >= 0 is needed"),
    ("train.dtype=fp8", "train.dtype='fp8' is not one of: bfloat16 | float16 | float32"),
    ("model.cross_entropy=fast", "model.cross_entropy='fast' is not one of"),
    ("wandb.mode=cloud", "wandb.mode='cloud' is not one of: auto | online | offline | disabled"),
    ("train.betas=[0.9]", "train.betas=[0.9]: two numbers in [0, 1) are needed"),
    ("train.min_lr=1", "train.min_lr=1 is above train.lr="),
    ("train.allow_changes=[context]", "train.allow_changes names 'context'"),
    ("train.init_positions=stretch", "train.init_positions='stretch' is not one of: copy | interpolate"),
    ("train.steps_per_run=0", "train.steps_per_run=0: a positive whole number or null is needed"),
    ("model.n_head=5", "model.n_embd=64 is not a multiple of model.n_head=5"),
    ("model.window=0", "model.window=0: a positive whole number or null is needed"),
    ("model.impl=hf model.window=64", "model.window (sliding-window attention) needs model.impl=ours"),
    ("attention=flash1 model.documents=true", "model.documents (document masking) needs model.impl=ours and attention="),
]
# ... and through train.py, as a user meets them: one line on stderr, exit 2, nothing written.
BAD_INPUT = [
    ("context=0", "context=0: a positive whole number is needed"),
    ("data.train_files=missing/*.jsonl", "no data file matches"),
    ("train.resume=true", "train.resume=true but there is no checkpoint"),
    ("train.micro_batch_tokens=100", "must be a multiple of context"),
    ("data.val_fraction=0.0", "leaves an empty split; set data.val_files or another data.val_fraction"),
    ("data.text_field=body", "no string field 'body' (data.text_field)"),
    ("experiment=finetune", "train.init_from is required here"),
]


@pytest.mark.parametrize("override,message", CONFIG_ERRORS)
def test_config_errors_name_the_key(override, message):
    from hydra import compose, initialize_config_dir
    from training.config import UserError, check
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [o for o in SMALL if o != "experiment=smoke"] + ["experiment=smoke", *override.split()])
    with pytest.raises(UserError) as e:
        check(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (["attention=sdpa", "attention.options.kernel=fa3"],
     "attention.options.kernel='fa3' is not one of: null | flash | cudnn | efficient | math"),
    (["attention=flash", "+attention.options.tiles=64"],
     "attention.options.tiles: attention=flash has no such option; it takes: autotune, tuning_cache, tma, wide, fast_launch, gluon, gluon_backward"),
    (["attention=flash", "attention.options.autotune=1"], "attention.options.autotune=1 is not one of: true | false"),
    (["attention=naive", "+attention.options.kernel=math"], "attention.options.kernel: attention=naive has no such option; it takes none"),
])
def test_attention_options_are_the_backends_own(overrides, message):
    from hydra import compose, initialize_config_dir
    from training.config import UserError, check
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", SMALL + overrides)
        default = compose("config", SMALL + overrides[:1])
    with pytest.raises(UserError) as e:
        check(cfg)
    assert str(e.value) == message
    check(default)  # the backend's defaults pass


@pytest.mark.parametrize("override,message", BAD_INPUT)
def test_bad_input_is_one_clear_line(tmp_path, shared_data, override, message):
    """One line on stderr naming the key, exit 2, nothing written in the run directory."""
    overrides = ["train.max_steps=1", "train.warmup_steps=0", override]
    r = run(tmp_path, *overrides) if not override.startswith("experiment=") else subprocess.run(
        [sys.executable, "train.py", override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
        text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.startswith("error: ")]) == 1
    assert not (tmp_path / "run").exists() or {p.name for p in (tmp_path / "run").iterdir()} <= {".lock"}


def test_our_kernels_on_the_cpu_are_one_clear_error(tmp_path, shared_data):
    r = run(tmp_path, "train.max_steps=1", "attention=flash", "train.device=cpu")
    assert r.returncode == 2
    assert "attention=flash runs our Triton kernels in fp16/bf16 on a CUDA GPU" in r.stderr
    assert "Traceback" not in r.stderr


def test_multirun_sweep_over_backends(tmp_path, shared_data):
    cmd = [sys.executable, "train.py", "-m", *SMALL, "attention=naive,sdpa", "train.max_steps=2",
           "train.eval_every=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"data.cache_dir={tmp_path / 'cache'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = {}
    for name in ("naive", "sdpa"):
        run_dir = next((tmp_path / "sweep").glob(f"gpt2-tiny-ours-{name}-ctx64-*"))
        rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [m["train/loss"] for m in rows if "train/loss" in m]
    assert len(losses["naive"]) == 2
    assert losses["naive"] == pytest.approx(losses["sdpa"], rel=1e-5)  # same math in fp32


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipping active, inactive
def test_clip_folded_into_fused_adamw_equals_clip_grad_norm(max_norm):
    """train.clip_and_step's fused path (AdamW divides by grad_scale) against the plain
    clip_grad_norm_ + AdamW step, parameter for parameter."""
    import torch
    sys.path.insert(0, str(ROOT))
    from training.loop import clip_and_step
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
        norms = []
        for step in range(3):
            x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step))
            model(x).square().mean().backward()
            norms.append(clip_and_step(model, opt, max_norm))
            opt.zero_grad(set_to_none=True)
        results.append(([p.detach().clone() for p in model.parameters()], norms))
    (p1, n1), (p2, n2) = results
    assert not hasattr(opt, "grad_scale")
    for a, b in zip(n1, n2):
        torch.testing.assert_close(a, b)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context", [64, 128])
def test_finetune_from_a_checkpoint(tmp_path, tiny_run, context, shared_data):
    """experiment=finetune: the parent's weights (positions extended at a longer context), a
    fresh optimizer and schedule, other data; the first loss continues the parent's curve."""
    cmd = [sys.executable, "train.py", "experiment=finetune", "model=gpt2-tiny", f"context={context}",
           "train.device=cpu", f"train.init_from={tiny_run}", "data=local",
           f"data.train_files=[{shared_data}/webtext-sample/webtext_sample.jsonl.xz]", "data.max_docs=300", "data.val_fraction=0.1",
           f"data.cache_dir={tmp_path / 'cache'}", "train.batch_tokens=1024", "train.micro_batch_tokens=512",
           "train.max_steps=4", "train.warmup_steps=2", "train.log_every=1", "train.eval_tokens=4096",
           "wandb.mode=offline", f"hydra.run.dir={tmp_path / 'ft'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"weights from checkpoint {tiny_run / 'ckpt-00000030.pt'} (step 30)" in r.stdout
    if context == 128:
        assert "positions 64 -> 128 (copy)" in r.stdout
    parent = [m["train/loss"] for m in read_metrics(tiny_run) if "train/loss" in m]
    child = [m["train/loss"] for m in read_metrics(tmp_path / "ft") if "train/loss" in m]
    print(parent[0], parent[-1], child[0])
    assert abs(child[0] - parent[-1]) < 0.75 < parent[0] - child[0]
    cfg = json.loads((tmp_path / "ft/config.json").read_text())
    assert cfg["train"]["init_from"] == str(tiny_run) and cfg["train"]["lr"] == 6.0e-5 and cfg["wandb"]["group"] == "finetune"
