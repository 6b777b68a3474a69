"""The README's CPU commands run as written, from the repo root (the block after the marker)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_readme.py runs every command of the next block"


def cpu_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARKER) + r".*?\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its tested CPU block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.xdist_group("readme")  # one worker runs them in order: they share the repo's runs/ and token cache
@pytest.mark.parametrize("command", cpu_commands())
def test_readme_command_runs_as_written(command, shared_data):
    if not (ROOT.parent / "shared").is_dir():
        pytest.skip("the README's paths name ../shared beside the checkout")
    before = set((ROOT / "runs").rglob("*")) if (ROOT / "runs").is_dir() else set()
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA")}  # as a user has it
    env["WANDB_MODE"] = "offline"
    try:
        r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert re.search(r"val ppl \d", r.stdout), r.stdout[-2000:]
    finally:
        for p in sorted(set((ROOT / "runs").rglob("*")) - before, reverse=True):  # what this test made
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    assert shlex.split(command)[1] == "python"


def test_every_measured_figure_is_in_a_committed_result():
    """Each decimal figure of the README's measured results is, to its own digits, a number that
    some file under benchmarks/results holds: a figure typed from memory, or left behind when a
    result was measured again, fails here."""
    text = (ROOT / "README.md").read_text()
    results = text[text.index("## Measured results"):]
    results = results[:results.index("\n## ", 1)]
    held = set()
    for f in (ROOT / "benchmarks/results").rglob("*"):
        if f.is_file() and f.suffix in (".md", ".json", ".jsonl", ".log", ".txt"):
            held |= set(re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?![\d])", f.read_text(errors="ignore")))
    rounded = {f"{float(x):.{k}f}" for x in held for k in range(5)}
    figures = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", results))
    assert figures, "README lost its measured results"
    assert not sorted(figures - rounded), "README figures no committed result holds"


def test_the_paper_summaries_are_the_reports_own():
    """The README's paper results are each GPU report's computed summary, copied by
    `reproduce --readme`: a report regenerated without the README fails here."""
    from benchmarks.reproduce import README_BLOCK, readme_block
    text = (ROOT / "README.md").read_text()
    head = re.escape(README_BLOCK[0]).replace(r"\{\}", "(.+?)")
    blocks = re.findall(head + r"\n(.*?)\n" + re.escape(README_BLOCK[1]), text, re.S)
    assert {name for name, _ in blocks} >= {"benchmarks/results/h100/paper/report.md", "benchmarks/results/h200/paper/report.md"}
    for name, block in blocks:
        assert block == readme_block(ROOT / name, ROOT), f"README's summary of {name} differs from the report's: " \
            f"python -m benchmarks.reproduce {Path(name).parent} --report-only --readme README.md"
