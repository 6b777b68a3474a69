"""benchmarks/table4.py on a tiny model: every context scores the same targets; a cut context
and a sliding window; the protocol configs; summary.json."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks import table4
from model import GPT, GPTConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny(context):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, context=context, vocab_size=100, attention="sdpa")).eval()


def test_contexts_score_the_same_targets_and_a_cut_context_is_the_window_prefix():
    data = np.random.default_rng(0).integers(0, 100, 1025).astype(np.uint16)
    model = tiny(256)
    full, pos = table4.target_losses(model, data, 256, 1024, "cpu")
    cut, cut_pos = table4.target_losses(model, data, 64, 1024, "cpu")
    assert full.shape == cut.shape == (1024,) and not np.isnan(full).any()
    assert set(pos) == set(range(256)) and set(cut_pos) == set(range(64))
    # A causal model's first 64 positions of a 256-window see what a 64-window sees.
    np.testing.assert_allclose(full[:64], cut[:64], rtol=1e-5, atol=1e-5)
    slide, slide_pos = table4.target_losses(model, data, 256, 1024, "cpu", stride=128)
    np.testing.assert_allclose(slide[:256], full[:256], rtol=1e-5, atol=1e-5)  # the first window whole
    assert slide_pos[256:].min() == 128  # later targets see at least 128 tokens
    with pytest.raises(ValueError, match="not tiled"):
        table4.target_losses(model, data, 256, 1000, "cpu")
    buckets = table4.by_bucket(full, pos, 256)
    assert list(buckets) == ["0-63", "64-255"] and buckets["0-63"] == pytest.approx(full[pos < 64].mean())


@pytest.mark.parametrize("experiment,context", [("table4-scratch", 1024), ("table4-staged", 4096), ("table4-control", 1024)])
def test_protocol_configs(experiment, context):
    from training.config import UserError, check
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"])
    assert cfg.context == context and cfg.train.batch_tokens == 65536 and cfg.data.name == "gutenberg"
    assert cfg.train.eval_tokens % 4096 == 0  # a multiple of every context: the same targets
    if experiment == "table4-scratch":
        check(cfg)
        assert cfg.train.max_steps == 4096
    else:
        with pytest.raises(UserError, match="train.init_from is required"):
            check(cfg)
        assert cfg.train.max_steps == 1024


def test_summary_table_and_figure(tmp_path):
    score = {"run": "r", "protocol": "staged", "context": 4096, "seed": 1, "init_positions": "copy",
             "train_tokens": 268435456, "val_tokens": 4096 * 3, "val_ppl": 28.4, "val_ppl_ctx1024": 30.1,
             "val_ppl_sliding": None, "loss_by_position": {"0-63": 3.7, "64-255": 3.4}, "curve": [[1, 30.0], [2, 28.5]],
             "tokens_per_s": 1.0, "train_time_s": 2.0, "attention": "flash"}
    control = {**score, "run": "c", "protocol": "control", "context": 1024, "init_positions": "copy",
               "val_ppl": 29.6, "val_ppl_ctx1024": None, "val_ppl_sliding": 28.2}
    other_seed = {**score, "run": "s2", "seed": 2, "val_ppl": 28.6}   # no control of seed 2
    scratch = {**score, "run": "x", "protocol": "scratch", "init_positions": None, "val_ppl": 33.0}
    scratch_1k = {**scratch, "run": "x1", "context": 1024, "val_ppl": 30.0}
    scratch_2k = {**scratch, "run": "x2", "context": 2048, "train_tokens": 1, "val_ppl": 31.0}  # no 1K run at its tokens
    parent_1k = {**scratch_1k, "run": "x1p", "train_tokens": 201326592, "val_ppl": 31.3}  # the same seed, cut short
    runs = {"a": score, "c": control, "s2": other_seed, "x": scratch, "x1": scratch_1k, "x1p": parent_1k,
            "x2": scratch_2k}
    for name, s in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(s))
    table4.main(["summary", *(str(tmp_path / f"{n}.json") for n in runs), "--out", str(tmp_path / "out"),
                 "--meta", '{"device": "x"}'])
    summ = json.loads((tmp_path / "out/summary.json").read_text())
    assert summ["meta"] == {"device": "x"} and summ["runs"][-2]["val_ppl_ctx1024"] == 30.1
    assert [(c["train_tokens"], c["val_ppl"]) for c in summ["by_config"] if c["config"] == "scratch 1024"] == \
        [(201326592, [31.3]), (268435456, [30.0])]  # one row a budget: the short run is not a second seed
    configs = {c["config"]: c for c in summ["by_config"] if c["train_tokens"] != 201326592}
    staged = configs["staged 4096 (copy)"]
    assert staged["seeds"] == [1, 2] and staged["val_ppl_mean"] == pytest.approx(28.5)
    assert staged["baseline"] == "control 1024" and staged["ratio_to_baseline"] is None  # seed 2 has no control
    assert configs["scratch 4096"]["baseline"] == "scratch 1024"  # scratch pairs with scratch, not the control
    assert configs["scratch 4096"]["ratio_to_baseline"] == [pytest.approx(1.1)]
    assert configs["scratch 2048"]["ratio_to_baseline"] is None   # the 1K run has other tokens: not paired
    assert configs["control 1024"]["baseline"] is None
    table = (tmp_path / "out/table.md").read_text()
    assert "| staged 4096 (copy) | 1 |  | 268M | 28.40 | 30.10 |" in table
    assert "| control 1024 | 268M | 1 | 29.60 | 29.60 |  |  |  |" in table
    assert "| scratch 4096 | 268M | 1 | 33.00 | 33.00 |  | scratch 1024 | 1.100 |" in table
    from benchmarks.reproduce import table4_protocols
    section = table4_protocols(tmp_path / "out")  # the report's Table 4, from summary.json alone
    assert "| staged 4096 (copy) | 1 |  | 268M | 28.40 |" in section and "![Table 4](table4/table4.png)" in section
    assert "- staged 4096 (copy): val ppl 28.40, 28.60; not paired yet" in section  # seed 2 has no control
    assert "- scratch 4096: val ppl 33.00 (seed 1); over scratch 1024 of the same seed and tokens: 1.100" in section
    assert (tmp_path / "out/table4.png").stat().st_size > 0


def test_a_run_without_weights_shows_its_curve_and_pairs_with_nothing(tmp_path):
    run = tmp_path / "scratch-ctx2048-seed1"   # the machine went back before it was scored
    run.mkdir()
    cfg = {"context": 2048, "attention": {"name": "flash"}, "wandb": {"group": "table4-scratch"},
           "train": {"seed": 1, "batch_tokens": 65536, "max_steps": 4096, "init_from": None}}
    (run / "config.json").write_text(json.dumps(cfg))
    rows = [{"step": s, "tokens_seen": s * 65536, "tokens_per_s": 4e5 + s, "train_time_s": s / 10} for s in (512, 3072)]
    rows += [{"step": s, "tokens_seen": s * 65536, "val/ppl": p} for s, p in ((512, 117.3), (3072, 31.7))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table4.main(["unscored", str(run), "--out", str(tmp_path / "scores")])
    facts = json.loads((tmp_path / "scores" / f"{run.name}.json").read_text())
    assert facts["val_ppl"] is None and facts["curve"] == [[512 * 65536, 117.3], [3072 * 65536, 31.7]]
    assert (facts["train_tokens"], facts["schedule_tokens"]) == (3072 * 65536, 4096 * 65536)
    scored_1k = {**facts, "run": "x1", "context": 1024, "val_ppl": 31.3, "loss_by_position": {"0-63": 3.8}}
    (tmp_path / "scores/x1.json").write_text(json.dumps(scored_1k))
    table4.main(["summary", str(tmp_path / "scores" / f"{run.name}.json"), str(tmp_path / "scores/x1.json"),
                 "--out", str(tmp_path / "out")])
    summ = json.loads((tmp_path / "out/summary.json").read_text())
    assert [c["config"] for c in summ["by_config"]] == ["scratch 1024"]   # an unscored run is no one's pair
    assert "| scratch 2048 | 1 |  | 201M | not scored (curve to 201M of 268M) |" in (tmp_path / "out/table.md").read_text()
    assert (tmp_path / "out/table4.png").stat().st_size > 0


def test_a_staged_run_pairs_with_the_control_of_its_own_parent(tmp_path):
    """Two trainings of one seed's parent (GPU training is not bitwise repeatable): a staged run is
    compared with the control continuing its own parent, else with the other training's (marked);
    the verdict on the contexts' order is computed from the paired ratios."""
    base = {"protocol": "staged", "context": 4096, "seed": 1, "init_positions": "copy", "train_tokens": 268435456,
            "val_tokens": 4096, "val_ppl_ctx1024": None, "val_ppl_sliding": None, "loss_by_position": {},
            "curve": [], "tokens_per_s": 1.0, "train_time_s": 1.0, "attention": "flash"}
    runs = {"control-a": {**base, "protocol": "control", "context": 1024, "parent": "p-a", "val_ppl": 30.0},
            "control-b": {**base, "protocol": "control", "context": 1024, "parent": "p-b", "val_ppl": 29.0},
            "staged-4k": {**base, "parent": "p-a", "val_ppl": 29.1},
            "staged-2k": {**base, "context": 2048, "parent": "p-b", "val_ppl": 28.42},
            "staged-2k-s2": {**base, "context": 2048, "seed": 2, "parent": "p-c", "val_ppl": 28.0}}
    for name, s in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(s))
    paths = [str(tmp_path / f"{n}.json") for n in runs]
    summ = table4.summary(paths, {})
    configs = {c["config"]: c for c in summ["by_config"]}
    assert configs["staged 4096 (copy)"]["ratio_to_baseline"] == [pytest.approx(29.1 / 30.0)]  # p-a's control, not p-b's
    assert configs["staged 2048 (copy)"]["ratio_to_baseline"] is None   # seed 2 has no control at all
    assert configs["control 1024"]["val_ppl_spread"] == pytest.approx(1.0)
    assert {r["run"] for r in summ["runs"]} == set(runs)   # named after the score file
    (tmp_path / "staged-2k-s2.json").unlink()
    (tmp_path / "control-s2.json").write_text(json.dumps({**runs["control-b"], "seed": 2, "parent": "p-d", "val_ppl": 29.0}))
    (tmp_path / "staged-2k-s2.json").write_text(json.dumps(runs["staged-2k-s2"]))
    summ = table4.summary(sorted(tmp_path.glob("*.json")), {})
    staged_2k = next(c for c in summ["by_config"] if c["config"] == "staged 2048 (copy)")
    assert staged_2k["ratio_to_baseline"] == [pytest.approx(28.42 / 29.0), pytest.approx(28.0 / 29.0)]
    assert staged_2k["same_parent"] == [True, False]
    text = table4.table(summ)
    assert "0.980, 0.966*" in text and "another training of the same seed's parent" in text
    assert "4096: 0.970x (1 run); 2048: 0.966-0.980x (2 runs)" in text and "ranges overlap" in text
    runs["staged-4k"]["val_ppl"] = 28.5     # 0.950x: below every 2K run
    (tmp_path / "staged-4k.json").write_text(json.dumps(runs["staged-4k"]))
    text = table4.table(table4.summary(sorted(tmp_path.glob("*.json")), {}))
    assert "ppl(4K) < ppl(2K) < ppl(1K), the paper's order (one run of a context: its run-to-run spread is not measured)" in text
    for name, ppl in (("staged-4k", 32.0), ("staged-2k", 30.0), ("staged-2k-s2", 29.5)):   # above their controls
        (tmp_path / f"{name}.json").write_text(json.dumps({**runs[name], "val_ppl": ppl}))
    assert "ppl(4K) > ppl(2K) > ppl(1K), the reverse" in table4.table(table4.summary(sorted(tmp_path.glob("*.json")), {}))


def test_speed_against_standard_attention_on_the_same_gpu(tmp_path):
    """The paper's speed half: our 4096 runs' tokens/s (median) against a speed-only run of
    standard attention at 1024 on the same GPU, and the hours to the same tokens."""
    naive = tmp_path / "speed-naive-1024"
    naive.mkdir()
    cfg = {"context": 1024, "attention": {"name": "naive"}, "wandb": {"group": "table4-scratch"},
           "env": {"device": "GPU A"}, "train": {"seed": 1, "batch_tokens": 65536, "max_steps": 256, "init_from": None}}
    (naive / "config.json").write_text(json.dumps(cfg))
    rows = [{"step": s, "tokens_seen": s * 65536, "tokens_per_s": r, "train_time_s": s} for s, r in ((32, 1e5), (64, 3e5), (96, 3e5))]
    (naive / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"protocol": "staged", "context": 4096, "seed": 1, "init_positions": "copy", "parent": "p",
            "train_tokens": 268435456, "val_tokens": 4096, "val_ppl": 28.5, "val_ppl_ctx1024": None,
            "val_ppl_sliding": None, "loss_by_position": {}, "curve": [], "train_time_s": 1.0, "attention": "flash"}
    for name, rate, device in (("a", 3.9e5, "GPU A"), ("b", 3.8e5, "GPU A"), ("c", 3.3e5, "GPU B")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, "tokens_per_s": rate, "device": device}))
    summ = table4.summary(sorted(tmp_path.glob("*.json")), {}, [naive])
    assert summ["speed_baselines"] == [{"run": "speed-naive-1024", "attention": "naive", "context": 1024,
                                        "device": "GPU A", "tokens_per_s": 3e5, "steps": 96}]
    (line,) = table4.speed(summ)   # GPU B's run is not compared with GPU A's baseline
    assert "attention=flash at 4096 trains at 385,000 tokens/s (median of 2 runs)" in line
    assert "attention=naive at 1024 at 300,000 (speed-naive-1024, 96 steps): 1.28x" in line
    assert f"268M tokens take {268435456 / 3.85e5 / 3600:.2f} h against {268435456 / 3e5 / 3600:.2f} h" in line
    assert line in table4.table(summ)


def test_where_the_staged_gain_comes_from_is_computed(tmp_path):
    """A staged 4K run ahead of its control only because fewer targets start a window: worse on
    1024-token windows, and the control with a sliding window ahead of it; said so. A run ahead on
    1024-token windows too is not said to gain from window starts."""
    base = {"protocol": "staged", "context": 4096, "seed": 1, "init_positions": "copy", "train_tokens": 1, "parent": "p",
            "val_tokens": 4096, "val_ppl": 28.4, "val_ppl_ctx1024": 30.1, "val_ppl_sliding": None, "curve": [],
            "loss_by_position": {"512-1023": 3.34, "1024-2047": 3.33, "2048-4095": 3.335},
            "tokens_per_s": 1.0, "train_time_s": 1.0, "attention": "flash"}
    control = {**base, "protocol": "control", "context": 1024, "val_ppl": 29.6, "val_ppl_ctx1024": None,
               "val_ppl_sliding": 28.2, "loss_by_position": {"512-1023": 3.336}}
    for name, s in (("staged", base), ("control", control)):
        (tmp_path / f"{name}.json").write_text(json.dumps(s))
    text = table4.windows(table4.summary(sorted(tmp_path.glob("*.json")), {}))
    assert "cut to 1024-token windows it scores 30.10 against the controls' 29.60 (worse" in text
    assert "minus the control's at 512-1023 is -0.006 to -0.001 nats" in text
    assert "reach 28.20, against its 28.40: most of the gain is fewer window starts" in text
    (tmp_path / "staged.json").write_text(json.dumps({**base, "val_ppl": 28.0, "val_ppl_ctx1024": 29.0}))
    text = table4.windows(table4.summary(sorted(tmp_path.glob("*.json")), {}))
    assert "worse" not in text and "fewer window starts" not in text
    assert table4.windows(table4.summary([tmp_path / "control.json"], {})) is None
