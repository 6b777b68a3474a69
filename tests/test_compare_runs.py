"""benchmarks/compare_runs.py on run directories written the way train.py writes them."""

import json
import math

import pytest

from benchmarks.compare_runs import compare, load_dir, main


def fake_run(path, attention, rates, val_losses, impl="ours", device="NVIDIA H200"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": {"impl": impl}, "attention": {"name": attention},
                                                  "context": 1024, "train": {"compile": "auto", "device": "cuda"},
                                                  "env": {"device": device, "world": 1}}))
    rows = [{"step": 10 * (i + 1), "train/loss": 5.0 - 0.1 * i, "tokens_per_s": r, "mfu": r / 1e6,
             "peak_mem_gb": 7.5, "tokens_seen": 16384 * 10 * (i + 1), "train_time_s": 10.0 * (i + 1)}
            for i, r in enumerate(rates)]
    rows += [{"step": 10 * (i + 1), "val/loss": v, "val/ppl": math.exp(v), "tokens_seen": 16384 * 10 * (i + 1),
              "train_time_s": 10.0 * (i + 1)} for i, v in enumerate(val_losses)]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_table_and_plots(tmp_path):
    a = fake_run(tmp_path / "hf", "naive", [1.0, 100.0, 110.0, 120.0], [6.0, 5.5, 5.0, 4.8], impl="hf")
    b = fake_run(tmp_path / "flash", "flash", [5.0, 300.0, 330.0, 360.0], [6.0, 5.4, 4.9, 4.7])
    table, rows = compare([load_dir(a), load_dir(b)], baseline="hf", target_loss=5.0, out=tmp_path / "cmp")
    hf, flash = rows
    assert hf["tokens_per_s"] == 110.0 and flash["tokens_per_s"] == 330.0  # median, first interval left out
    assert "| flash | NVIDIA H200 | ours | flash | on | 1024 | 40 | 330 | - | 3.00x |" in table  # < 5 intervals: no spread
    assert flash["first_interval_s"] == 10.0  # the first logged interval (compilation lands there)
    assert hf["time_to_target_s"] == 30.0 and flash["time_to_target_s"] == 30.0
    assert flash["max_loss_diff"] == 0.0
    for f in ("compare.md", "compare.json", "val_ppl.png", "tokens_per_s.png"):
        assert (tmp_path / "cmp" / f).stat().st_size > 0


def test_the_intervals_spread_shows_a_noisy_host(tmp_path):
    """The 10th-90th percentile of the steady intervals: a quiet run's is narrow, a noisy one's wide."""
    quiet = fake_run(tmp_path / "quiet", "naive", [1.0, *[100.0 + i % 2 for i in range(20)]], [5.0])
    noisy = fake_run(tmp_path / "noisy", "flash", [1.0, *[300.0 + 40 * (i % 3 - 1) for i in range(20)]], [5.0])
    table, (q, n) = compare([load_dir(quiet), load_dir(noisy)])
    assert q["tokens_per_s_p10_p90"][0] >= 100.0 and q["tokens_per_s_p10_p90"][1] <= 101.0
    assert n["tokens_per_s_p10_p90"][0] == pytest.approx(260.0) and n["tokens_per_s_p10_p90"][1] == pytest.approx(340.0)
    assert "| 300 | 260-340 |" in table


def test_runs_of_other_machines_and_missing_values(tmp_path):
    """No NaN in compare.json (JSON has none): missing values are null; a ratio across devices says so."""
    a = fake_run(tmp_path / "a", "sdpa", [1.0, 100.0], [5.0], device="NVIDIA H100 80GB HBM3")
    b = fake_run(tmp_path / "b", "flash", [1.0, 150.0], [], device="NVIDIA H200")
    table, _ = compare([load_dir(a), load_dir(b)], out=tmp_path / "cmp")
    assert "1.50x (other device)" in table and "2 different machines" in table
    rows = json.loads((tmp_path / "cmp/compare.json").read_text())  # strict JSON
    assert rows[1]["val_loss"] is None and "NaN" not in (tmp_path / "cmp/compare.json").read_text()


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    run = fake_run(tmp_path / "a", "sdpa", [1.0, 2.0], [5.0])
    with pytest.raises(SystemExit):
        main([str(run), "--baseline", "nope"])
    assert "--baseline 'nope' is not among the runs: a" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/config.json is missing"):
        main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        main(["no/such-dir"])
    assert "not a run directory nor a wandb path" in capsys.readouterr().err
