"""benchmarks/harness.py: the metadata, writers, launcher and tokens/s every benchmark shares."""

import json
import os
import signal
import subprocess
import sys

import pytest

from benchmarks import harness
from tests.conftest import ROOT


def test_command_is_what_a_user_types(monkeypatch):
    for var in [k for k in os.environ if k.startswith("FLASH_")]:
        monkeypatch.delenv(var)
    argv = ["--shapes", "64x12", "--out", "/root/scratch/out", str(ROOT / "benchmarks/results/h200/x")]
    assert harness.command(argv, "benchmarks.bench_attention") == \
        "python -m benchmarks.bench_attention --shapes 64x12 --out OUT benchmarks/results/h200/x"
    # the kernel's launch options change what is measured: they are part of the command
    monkeypatch.setenv("FLASH_AUTOTUNE", "0")
    assert harness.command(["--out", "/x"], "benchmarks.bench_attention") == \
        "FLASH_AUTOTUNE=0 python -m benchmarks.bench_attention --out OUT"
    assert harness.typed("FLASH_AUTOTUNE=0 python -m benchmarks.bench_attention") == \
        "FLASH_AUTOTUNE=0 python -m benchmarks.bench_attention"
    assert harness.typed("benchmarks/bench_attention.py --out OUT") == "python benchmarks/bench_attention.py --out OUT"
    assert harness.typed("python -m benchmarks.reproduce OUT") == "python -m benchmarks.reproduce OUT"
    # python -c "from attention import hopper; ...; bench_attention.main()" ARGS: not "benchmarks.-c"
    monkeypatch.setattr(sys, "argv", ["-c", "--seqlens", "8192"])
    assert harness.command() == "FLASH_AUTOTUNE=0 python -c CODE --seqlens 8192"


def test_metadata_and_the_files_written(tmp_path, monkeypatch):
    meta = harness.metadata(["--out", str(tmp_path)], tokens=16384)
    assert meta["command"].endswith("--out OUT") and meta["tokens"] == 16384
    assert meta["commit"] is None or len(meta["commit"].split("-")[0]) >= 7
    monkeypatch.setenv("BENCH_COMMIT", "abc1234")  # what a GPU run is told, over its copy's .git
    assert harness.metadata([])["commit"] == "abc1234"
    monkeypatch.delenv("BENCH_COMMIT")
    rows = [{"n": 1, "ratio": float("nan")}, {"n": 2, "ratio": float("inf")}, {"n": 3, "ratio": 1.5}]
    table = harness.md_table(["n", "ratio"], [[r["n"], r["ratio"]] for r in rows])
    harness.write(tmp_path / "out", "bench", meta, rows, table, "A benchmark")
    stored = json.loads((tmp_path / "out/bench.json").read_text())  # strict JSON: NaN and inf become null
    assert [r["ratio"] for r in stored["rows"]] == [None, None, 1.5] and stored["meta"] == meta
    md = (tmp_path / "out/bench.md").read_text().splitlines()
    assert md[0] == "# A benchmark" and meta["command"] in md[2] and md[4:6] == ["| n | ratio |", "|---|---|"]


def test_steady_tokens_per_s_skips_the_compiling_intervals():
    rows = [{"step": 1, "tokens_per_s": 10.0}, {"step": 2, "val/loss": 3.0}, {"step": 3, "tokens_per_s": 100.0},
            {"step": 4, "tokens_per_s": 110.0}, {"step": 5, "tokens_per_s": 90.0}]
    assert harness.steady_tokens_per_s(rows) == 100.0
    assert harness.steady_tokens_per_s(rows, skip=2) == 100.0
    assert harness.steady_tokens_per_s(rows[:1]) == 10.0 and harness.steady_tokens_per_s([]) is None


def test_scripts_run_as_modules_without_path_hacks():
    for f in (ROOT / "benchmarks").glob("*.py"):
        assert "sys.path" not in f.read_text(), f.name
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare_runs", "--help"], capture_output=True, text=True,
                       cwd="/")  # installed with the project: found from any directory
    assert r.returncode == 0 and "Compare training runs" in r.stdout


def test_a_failed_run_names_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"run bad failed \(exit 2\); its log: .*bad/train.log"):
        harness.train(tmp_path / "bad", ["context=0", "wandb.mode=disabled"])


def test_a_run_that_left_no_checkpoint_is_set_aside_and_started_again(tmp_path):
    """A run killed before its first checkpoint (seen on a GPU machine: `timeout` during
    compilation) left config.json and metrics.jsonl, so train.resume=auto refused the directory
    and the table could not go on without a hand's rm -rf; now it is moved aside, log and all."""
    run = tmp_path / "bad"
    run.mkdir()
    (run / "config.json").write_text('{"train": {"max_steps": 300}}')
    (run / "metrics.jsonl").write_text('{"step": 3}\n')
    with pytest.raises(RuntimeError, match=r"run bad failed \(exit 2\)"):  # the new attempt's own error
        harness.train(run, ["context=0", "wandb.mode=disabled"])
    assert (tmp_path / "bad.failed-1/metrics.jsonl").read_text() == '{"step": 3}\n'
    assert not (run / "metrics.jsonl").exists()


def test_sigterm_to_the_launcher_reaches_the_run_which_checkpoints(tmp_path):
    """`timeout -s TERM` (or a scheduler) signals the launcher, e.g. benchmarks.reproduce: the run
    it started finishes its step, checkpoints and exits, and the launcher stops with one line
    saying so; the same call resumes the run from there."""
    from tests.conftest import REFERENCE, SMALL, wait_for_step
    overrides = [*SMALL, f"data.cache_dir={tmp_path / 'cache'}", *REFERENCE]
    code = f"from benchmarks import harness; harness.train({str(tmp_path / 'run')!r}, {overrides!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # the signal reaches the launcher only
    wait_for_step(tmp_path / "run", 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Stopped: SIGTERM: run run stopped at step" in err, err[-2000:]
    assert "(resume with the same command)" in err
    saved = sorted((tmp_path / "run").glob("ckpt-*.pt"))
    assert saved and "with a checkpoint" in (tmp_path / "run/train.log").read_text()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert harness.finished(tmp_path / "run")
