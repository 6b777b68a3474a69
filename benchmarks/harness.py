"""What the benchmarks share, so that each script is only its measurement:

- metadata(): device, versions, date, commit, and the command as a user types it;
- write(): NAME.json ({"meta", "rows"}) and NAME.md (title, where and how, the table);
- md_table(): a Markdown table;
- train(), finished(), progress(): the one launcher of training runs (train.py, under torchrun
  for several GPUs), reusing a finished run and resuming a cut one; a time limit's SIGTERM to
  the launcher reaches the run, which checkpoints, and train() raises Stopped;
- metrics(), steady_tokens_per_s(): a run's logged rows, and its steady-state tokens/s (the
  median of the logged intervals after those that hold compilation and autotuning).
  benchmarks/train_speed.py times sustained windows itself; its table is the training speed.

Every script runs as `python -m benchmarks.NAME` from the repository root (`pip install -e .`
installs `benchmarks` with the project).
"""

import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(argv=None, module=None):
    """`python -m benchmarks.NAME ARGS` as a user types it: paths inside the repository
    relative to it, any other absolute path (a GPU machine's scratch folder) as OUT, and in
    front the FLASH_* variables set (the kernel's launch options: FLASH_AUTOTUNE=0 measures
    fixed tiles, not tuned ones). Under `python -c CODE ARGS` (an A/B that sets a module
    constant first) Python keeps no copy of CODE: the command says CODE, the README the code."""
    if module is None and sys.argv[0] == "-c":
        program = "python -c CODE"
    else:
        program = "python -m " + (module or getattr(sys.modules["__main__"].__spec__, "name", None)
                                  or "benchmarks." + Path(sys.argv[0]).stem)
    args = []
    for arg in sys.argv[1:] if argv is None else argv:
        arg = str(arg)
        if arg.startswith("/"):
            p = Path(arg).resolve()
            arg = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else "OUT"
        args.append(arg)
    launch = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("FLASH_")]
    return " ".join([*launch, program, *args])


def span(values, fmt="{:.2f}"):
    """"lo-hi" of values as fmt writes them, or one value where both read the same."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def typed(recorded):
    """A recorded command as typed: results written before this harness recorded the script's
    path and arguments without `python`."""
    program = re.sub(r"^(\w+=\S* )*", "", recorded)  # after any VARIABLE=value in front
    return recorded if program.startswith(("python", "bash", "torchrun")) else f"python {recorded}"


def commit():
    """The checkout's short commit, with -dirty when tracked files differ from it; None
    outside a git checkout. BENCH_COMMIT, where set, wins: a GPU machine's copy of the tree can
    carry a stale .git (seen on 2026-12-03: it named the session's first commit), so a run
    there is told the commit it was sent with."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def metadata(argv=None, **extra):
    """Where and how a result was measured; `extra` adds the benchmark's own settings."""
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()})"
    return {"device": device, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "commit": commit(), "command": command(argv), **extra}


def describe(meta):
    """One line: device, date, versions, commit and command."""
    versions = f"torch {meta.get('torch')}" + (f", Triton {meta['triton']}" if meta.get("triton") else "")
    return (f"{meta['device']}, {meta['date']}, {versions}" + (f", commit {meta['commit']}" if meta.get("commit") else "")
            + f". `{typed(meta['command'])}`")


def md_table(header, rows):
    """A Markdown table: header (column names), rows (lists of cells, formatted already)."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def _strict(x):
    """NaN and infinities as null: the JSON stays standard (readers other than Python's reject NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def write(out, name, meta, rows, markdown=None, title=None):
    """out/NAME.json with the metadata and rows (a value that is not a finite number as null);
    out/NAME.md with the title, describe(meta) and `markdown` (the benchmark's table) when given.
    Safe to call after every row: a run cut short keeps what it measured."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(_strict({"meta": meta, "rows": rows}), indent=1, allow_nan=False))
    if markdown is not None:
        (out / f"{name}.md").write_text(f"# {title or name}\n\n{describe(meta)}\n\n{markdown.rstrip()}\n")


def metrics(run_dir):
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steady_tokens_per_s(rows, skip=1):
    """Median tokens/s of the logged training intervals after the first `skip` (which hold
    compilation and autotuning); all of them when there are no more. None without any."""
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return statistics.median(rates[skip:] or rates) if rates else None


def finished(run_dir):
    """The run's metrics reach its configured last step (with an evaluation there)."""
    try:
        cfg = json.loads((Path(run_dir) / "config.json").read_text())
        rows = metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return any(r["step"] == cfg["train"]["max_steps"] and "val/loss" in r for r in rows)


def progress(run_dir):
    """A run's state without running it: finished, stopped at a step, or not run."""
    if finished(run_dir):
        return "finished"
    try:
        cfg = json.loads((Path(run_dir) / "config.json").read_text())
        steps = [r["step"] for r in metrics(run_dir)]
    except (FileNotFoundError, json.JSONDecodeError):
        return "not run"
    return f"stopped at step {max(steps, default=0)} of {cfg['train']['max_steps']} (resume with the same command)"


class Stopped(RuntimeError):
    """A run stopped by SIGTERM or SIGUSR1 after writing its checkpoint: the same command resumes it."""


# Forwarded to the running train.py (which checkpoints after its step and exits): a scheduler's
# or `timeout`'s signal may reach only this process. Ctrl-C is not forwarded: the terminal sends
# it to the whole process group already, and a second one makes train.py exit without a checkpoint.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def _set_aside(run_dir):
    """A run directory holding a run that ended before its first checkpoint (a crash at start-up,
    a kill during compilation) is moved to RUN.failed-K, so that the run starts again and the
    old log stays readable; a live run there is refused (training/rundir.py's lock)."""
    from training import checkpoints, rundir
    if not rundir.holds_run(run_dir) or checkpoints.saved(run_dir):
        return
    rundir.RunDirLock(run_dir).close()  # raises while another process runs there
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.failed-{k}")).exists():
        k += 1
    run_dir.rename(aside)
    print(f"{run_dir} held a run that ended before its first checkpoint: moved to {aside.name}, starting again",
          flush=True)


def train(run_dir, overrides, nproc=1, steps_per_run=None):
    """One train.py run into run_dir (under torchrun with nproc > 1), its output in
    run_dir/train.log: skipped when finished there, resumed from its checkpoint when cut, started
    again when an earlier attempt left no checkpoint. SIGTERM / SIGUSR1 sent to this process
    reach the run, which checkpoints and exits; then Stopped is raised."""
    run_dir = Path(run_dir)
    if finished(run_dir):
        print(f"reusing {run_dir}", flush=True)
        return
    _set_aside(run_dir)
    launch = ["train.py"] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                                               "train.py"]
    cmd = [sys.executable, *launch, *overrides, f"hydra.run.dir={run_dir}",
           f"wandb.name={run_dir.parent.name}-{run_dir.name}", "train.resume=auto"]
    if steps_per_run:
        cmd.append(f"train.steps_per_run={steps_per_run}")
    shown = " ".join(cmd[1:]).replace("-m torch.distributed.run", "torchrun")
    print("$", shown if nproc > 1 else f"python {shown}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    received = []

    def forward(signum, frame):
        received.append(signal.Signals(signum).name)
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        stdout, stderr = proc.communicate()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if run_dir.is_dir():
        (run_dir / "train.log").write_text(stdout + stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run_dir.name} failed (exit {proc.returncode}); its log: {run_dir / 'train.log'}\n"
                           + stderr[-2000:])
    if received and not finished(run_dir):
        raise Stopped(f"{received[0]}: run {run_dir.name} {progress(run_dir)}")
