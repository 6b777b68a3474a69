"""benchmarks/reproduce.py end to end at the toy budget (CPU): every run of Tables 2 and 4,
the comparison tables, plots and the report; a second call reuses the finished runs."""

import json

from benchmarks.reproduce import main


def test_reproduce_toy_budget(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "paper"
    args = [str(out), "--budget", "toy", "--only", "table2,table2-medium,table4", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    main(args)
    report = (out / "report.md").read_text()
    for needed in ("## Table 2", "| hf-eager | cpu | hf | naive | off |", "| standard-eager | cpu | ours | naive | off |",
                   "## Table 4", "| flash-256 | 256 |", "The paper's Table 4 (quoted)", "time to val loss"):
        assert needed in report, needed
    for table in ("table2", "table2-medium"):
        rows = json.loads((out / table / "compare.json").read_text())
        # Same seed, same weights (transformers' model starts from ours): the same first losses.
        assert max(r["max_loss_diff"] for r in rows) < 1e-3
    assert "### GPT-2 medium" in report and "model: `gpt2-tiny` (4 layers, 128 wide, 4 heads)" in report
    assert "model: `gpt2-tiny` (2 layers, 64 wide, 2 heads)" in report
    for f in ("table2/val_ppl.png", "table2-medium/tokens_per_s.png", "table2/tokens_per_s.png", "table4/loss_by_position.png"):
        assert (out / f).stat().st_size > 0
    by_position = json.loads((out / "runs/table4/flash-256/loss_by_position.json").read_text())["loss"]
    assert len(by_position) == 256
    assert "- flash-256: finished" in report and "Figure 3: not measured" in report
    capsys.readouterr()
    main(args)  # finished runs are reused: nothing trains again
    assert "train.py" not in capsys.readouterr().out
    main([str(out), "--budget", "toy", "--report-only"])
    assert (out / "report.md").read_text().count("| flash-256 | 256 |") >= 1


def test_report_takes_the_budget_section_when_measured(tmp_path):
    """--report-only with benchmarks/budget.py's output under OUT/budget: its table in the report
    (the title line dropped for the report's own); without it, no such section."""
    from benchmarks import reproduce
    reproduce.main([str(tmp_path), "--report-only", "--kernel-tables"])
    assert "training budgets" not in (tmp_path / "report.md").read_text()
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget/budget.md").write_text("# The paper's training budgets at our measured rates\n\n"
                                               "where and how\n\n| paper | days |\n|---|---|\n| Table 2 | 0.67 |\n")
    reproduce.main([str(tmp_path), "--report-only", "--kernel-tables"])
    report = (tmp_path / "report.md").read_text()
    assert "## The paper's training budgets at our measured rates\n\nwhere and how\n\n| paper | days |" in report
    assert report.index("training budgets") < report.index("## Not tested here")


def test_table2_reading_is_computed_from_the_rows():
    """Table 2's sentences come from its rows: the throughput ratios, ours against SDPA with the
    intervals' overlap, the wall time to the common loss with each run's first interval, memory,
    and the curves' agreement; nothing is claimed about a run that is not there."""
    from benchmarks.reproduce import table2_claims
    row = lambda run, rate, spread, first, t, mem, diff: dict(  # noqa: E731
        run=run, tokens_per_s=rate, tokens_per_s_p10_p90=spread, first_interval_s=first, time_to_target_s=t,
        peak_mem_gb=mem, max_loss_diff=diff, val_loss=5.52)
    rows = [row("hf-eager", 100.0, (99, 101), 3, 60, 36.3, 0.0), row("standard-compiled", 300.0, (299, 301), 45, 62, 21, 0.01),
            row("sdpa", 400.0, (360, 420), 36, 48, 7.8, 0.016), row("flash", 360.0, (330, 390), 62, 76, 7.8, 0.006)]
    text = "\n".join(table2_claims(rows))
    assert "sdpa 4.00x, flash 3.60x" in text and "standard-compiled plays Megatron-LM's part" in text
    assert "flash over sdpa: 0.90x the tokens/s (their intervals' 10th-90th percentiles overlap" in text
    assert "flash 0.79x" in text and "flash 62 s" in text and "another order than their throughput" in text
    assert "peak memory: flash 7.8 GB against hf-eager 36.3 GB" in text and "within 0.016 of hf-eager's" in text
    rows[3]["tokens_per_s_p10_p90"] = (430, 450)  # apart: no claim that the gap is noise
    assert "overlap" not in "\n".join(table2_claims(rows))
    assert table2_claims(rows[:3]) == []  # no flash run: nothing to say about it


def test_a_part_another_gpus_report_holds_is_pointed_to(tmp_path):
    """results/<gpu>/paper lacking a part that a sibling GPU folder measured: the report links
    there instead of only saying "not run"; a folder holding the part gets no such line."""
    from benchmarks import reproduce
    (tmp_path / "h200/paper/figure3").mkdir(parents=True)
    (tmp_path / "h200/paper/figure3/attention.json").write_text("{}")
    (tmp_path / "h100/paper").mkdir(parents=True)
    assert reproduce.elsewhere(tmp_path / "h100/paper", "figure3", "attention.json") == [
        "- measured for another GPU's report: [../../h200/paper/figure3](../../h200/paper/figure3)", ""]
    assert reproduce.elsewhere(tmp_path / "h200/paper", "figure3", "attention.json") == []
    assert reproduce.elsewhere(tmp_path / "h100/paper", "table4", "summary.json") == []


def test_the_summary_opens_the_report_and_goes_into_the_readme(tmp_path):
    """The report's summary names where each part is (here, another GPU's report, linked); --readme
    writes it between the README's lines for this report, links made relative to the README, the
    rest of the README kept; a README without those lines is refused before anything runs."""
    import pytest
    from benchmarks import reproduce
    (tmp_path / "h200/paper/figure3").mkdir(parents=True)
    (tmp_path / "h200/paper/figure3/attention.json").write_text("{}")
    out = tmp_path / "h100/paper"
    out.mkdir(parents=True)
    readme = tmp_path / "README.md"
    start = reproduce.README_BLOCK[0].format("h100/paper/report.md")
    readme.write_text(f"# top\n\n{start}\nstale\n{reproduce.README_BLOCK[1]}\n\nbottom\n")
    reproduce.main([str(out), "--report-only", "--kernel-tables", "--readme", str(readme)])
    report = (out / "report.md").read_text()
    assert report.index("## Summary") < report.index("## Table 2")
    assert "- Figure 3: in [h200's report](../../h200/paper/report.md)\n" in report
    assert "- Table 2, GPT-2 medium: not measured yet\n" in report
    text = readme.read_text()
    assert text.startswith(f"# top\n\n{start}\n- Table 2, GPT-2 small: not measured yet\n") and "stale" not in text
    assert "- Figure 3: in [h200's report](h200/paper/report.md)\n" in text and text.endswith("\n\nbottom\n")
    readme.write_text("# no block\n")
    with pytest.raises(SystemExit):
        reproduce.main([str(out), "--report-only", "--kernel-tables", "--readme", str(readme)])
    assert readme.read_text() == "# no block\n"


def test_summary_lines():
    from benchmarks.reproduce import summary_lines
    assert summary_lines([("A", "GPU X, 2026-01-01", []), ("B", None, ["- one"]), ("C", None, ["- a", "- b"])]) == [
        "- A (GPU X, 2026-01-01): measured: its part below has the table (no reading computed for it)",
        "- B: one", "- C:", "  - a", "  - b"]
