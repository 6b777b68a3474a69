"""training/progress.py: a tqdm bar on a terminal, plain lines with total, elapsed and ETA otherwise."""

import io
import re
import sys

from training.progress import Progress


def test_plain_lines_when_not_a_terminal(capsys):
    p = Progress(step=0, total=10, tty=False)
    for step in range(1, 6):
        p.advance()
    p.report(5, {"loss": "3.21", "tok/s": "1,000"})
    p.say("step 5 | val loss 3.3")
    p.close()
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"step 5/10 \| loss 3\.21 \| tok/s 1,000 \| elapsed 0:00:00 \| eta 0:00:00", out[0])
    assert out[1] == "step 5 | val loss 3.3"


def test_a_bar_on_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    p = Progress(step=2, total=10, tty=True)  # resumed at step 2
    for _ in range(3):
        p.advance()
    p.report(5, {"loss": "3.21"})
    p.close()
    text = buf.getvalue()
    assert "5/10" in text and "loss 3.21" in text and "<" in text  # tqdm's elapsed<remaining


def test_rank_other_than_zero_prints_nothing(capsys):
    p = Progress(step=0, total=4, enabled=False, tty=False)
    p.report(1, {"loss": "1"})
    p.say("x")
    p.close()
    assert capsys.readouterr().out == ""
