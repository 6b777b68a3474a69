"""benchmarks/kernel_figures.py: every figure draws from bench_attention.py rows (here synthetic),
and the report picks up committed tables without a GPU."""

import json
from pathlib import Path

import pytest

from benchmarks import kernel_figures
from benchmarks.reproduce import (SEED_FIGURES, SWEEPS, _sweep_args, figure3_claims, figures, kernel_claims, seed_figures,
                                  seed_map, sweeps)

pytest.importorskip("matplotlib")


def rows(**vary):
    """bench_attention.py rows for four providers over one varied dimension."""
    (key, values), = vary.items()
    out = []
    for prov, speed in (("flash", 3.0), ("flash1", 2.0), ("sdpa-flash", 2.5), ("sdpa-cudnn", 3.2), ("naive", 0.2)):
        for causal in (True, False):
            for v in values:
                r = {**dict(provider=prov, head_dim=64, heads=12, causal=causal, seqlen=1024, batch=16), key: v}
                ms = r["batch"] * r["heads"] * r["seqlen"] ** 2 * r["head_dim"] / 1e9 / speed
                r.update({"peak_mem_mb": 100.0 * v, "ms_fwd": ms / 3.5, "ms_bwd": ms / 1.4, "ms_fwd+bwd": ms,
                          "tflops_fwd": speed * 90, "tflops_bwd": speed * 100, "tflops_fwd+bwd": speed * 95})
                out.append(r)
    return out


@pytest.mark.parametrize("axis,key", [("batch", "batch"), ("heads", "heads"), ("embd", "heads"), ("head_dim", "head_dim")])
def test_sweep_figures(tmp_path, axis, key):
    kernel_figures.sweep(rows(**{key: [1, 2, 4, 8]}), tmp_path / "s.png", axis)
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_seqlen_figures_and_heatmap(tmp_path):
    data = rows(seqlen=[512, 1024, 2048]) + [dict(provider="naive", head_dim=64, heads=12, causal=True, seqlen=4096,
                                                 batch=4, error="OOM")]
    for name in ("speedup_bars", "fa1_vs_fa2", "fwd_vs_bwd", "figure3"):
        getattr(kernel_figures, name)(data, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    grid = [dict(r, batch=b) for r in rows(seqlen=[512, 1024]) if r["provider"] == "flash" for b in (1, 2)]
    kernel_figures.heatmap(grid, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000


def test_report_parts_from_committed_tables(tmp_path):
    meta = dict(device="GPU X", date="2026-01-01", torch="2", triton="3", command="benchmarks/bench_attention.py ...")
    for d in ("d64", "figure3"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "attention.json").write_text(json.dumps({"meta": meta, "rows": rows(seqlen=[512, 1024])}))
    text, (title, where, claims) = seed_figures(tmp_path, [tmp_path / "d64", tmp_path / "missing"])
    assert "kernels/speedup_bars.png" in text and "GPU X, 2026-01-01" in text and "[d64](d64/attention.md)" in text
    assert where == "GPU X, 2026-01-01" and claims[0] in text  # the reading, computed from the rows
    assert "- flash over sdpa-cudnn, TFLOP/s fwd+bwd: d=64 0.94x; forward: d=64 0.94x (N = 512-1024, causal and not)" in claims
    assert "- flash over naive, TFLOP/s fwd+bwd: d=64 15.00x; forward: d=64 15.00x (N = 512-1024, causal and not)" in claims
    assert "- memory beyond the inputs: naive 51200-102400 MB, flash 51200-102400 MB at the same points" in claims
    cut = [dict(r, head_dim=128) for r in rows(seqlen=[512]) if r["causal"]]  # a d=128 table cut after its causal half
    assert "- flash over sdpa-cudnn, TFLOP/s fwd+bwd: d=64 0.94x, d=128 (causal) 0.94x; forward: d=64 0.94x, " \
           "d=128 (causal) 0.94x (N = 512-1024)" in kernel_claims(rows(seqlen=[512, 1024]) + cut)

    assert "figure3/figure3.png" in figures(tmp_path, "small", run=False)[0]
    assert sweeps(tmp_path, run=False).count("not measured") == len(SWEEPS)
    (tmp_path / "sweeps" / "causal").mkdir(parents=True)
    causal = rows(seqlen=[128, 256])
    (tmp_path / "sweeps" / "causal" / "attention.json").write_text(json.dumps(
        {"meta": {**meta, "command": "python -m benchmarks.bench_attention " + " ".join(_sweep_args("causal"))},
         "rows": causal}))
    text = sweeps(tmp_path, run=False)
    assert "sweeps/causal.png" in text and "sweeps/causal-fwd_and_bwd.png" in text and "earlier setting" not in text
    table = seed_map(tmp_path, [tmp_path / "d64", tmp_path / "missing"])[0]
    assert "| FA1 lab report (T4) | Fig. 5: causal against non-causal time | heads 8, batch 16, N 128-4096 | " \
           "sweeps/causal.png | sweeps/causal/attention.json | yes |" in table
    assert "| kernels/speedup_bars.png | d64/attention.json, missing/attention.json | yes |" in table
    assert table.count("not yet") == len(SEED_FIGURES) - 5  # kernels/ x 3, figure3
    d64 = json.loads((tmp_path / "d64/attention.json").read_text())  # a table without FA1: its figure says so
    d64["rows"] = [r for r in d64["rows"] if r["provider"] != "flash1"]
    (tmp_path / "d64/attention.json").write_text(json.dumps(d64))
    assert "| kernels/fa1_vs_fa2.png | d64/attention.json, missing/attention.json | without flash1 (its tables lack it" \
        in seed_map(tmp_path, [tmp_path / "d64", tmp_path / "missing"])[0]


def test_a_figure_its_tables_cannot_draw_is_named_not_drawn(tmp_path):
    """Tables without standard attention (the H100's of 2026-11-23): no speedup figure, and a
    stale one from an earlier drawing removed; the other figures drawn."""
    meta = dict(device="GPU X", date="2026-01-01", torch="2", triton="3", command="python -m benchmarks.bench_attention")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels/speedup_bars.png").write_bytes(b"stale")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/attention.json").write_text(json.dumps({"meta": meta, "rows": [
        r for r in rows(seqlen=[512, 1024]) if r["provider"] != "naive"]}))
    text = seed_figures(tmp_path, [tmp_path / "other"])[0]
    assert "speedup over standard attention: not drawn, these tables have no naive rows" in text
    assert "forward vs backward: not drawn" in text  # the seed's Fig. 12 compares with PyTorch
    assert not (tmp_path / "kernels/speedup_bars.png").exists() and (tmp_path / "kernels/fa1_vs_fa2.png").is_file()
    table = seed_map(tmp_path, [tmp_path / "other"])[0]
    assert "| kernels/fwd_vs_bwd.png | other/attention.json | without naive (its tables lack it" in table


def test_forward_table_marks_oom():
    data = [dict(r, batch=b, ms_fwd=1.0) for r in rows(seqlen=[512]) if r["provider"] in ("flash", "naive")
            for b in (16, 32)] + [dict(provider="naive", head_dim=64, heads=12, causal=True, seqlen=2048, batch=64,
                                       error="OOM")]
    table = kernel_figures.forward_table(data)
    assert "| 64 | 2048 | 12 | 1 | - | OOM |" in table and "| 16 | 512 | 12 | 1 | 1.000 / 270 / 51200 |" in table


def test_kernel_tables_are_the_reports_own_when_measured(tmp_path, monkeypatch):
    """--only kernels measures OUT/kernels/d64 and d128 (flash1 and naive among the providers);
    without them the report falls back to the GPU folder's attention/d64 and d128 where those
    exist; with neither it names its own (not measured yet)."""
    from benchmarks import reproduce
    asked = []
    monkeypatch.setattr(reproduce, "bench", lambda out_dir, args, run: asked.append((out_dir, args, run)))
    out = tmp_path / "paper"
    own = [out / "kernels/d64", out / "kernels/d128"]
    assert reproduce.kernel_tables(out, run=True) == own
    (tmp_path / "attention/d64").mkdir(parents=True)
    (tmp_path / "attention/d64/attention.json").write_text("{}")
    assert reproduce.kernel_tables(out, run=True) == [tmp_path / "attention/d64", tmp_path / "attention/d128"]
    assert [(d.relative_to(out), run) for d, _, run in asked] == [(Path("kernels/d64"), True), (Path("kernels/d128"), True)] * 2
    assert all("flash,flash-portable,flash1,sdpa-flash,sdpa-cudnn,flex,naive" in args for _, args, _ in asked)
    (out / "kernels/d64").mkdir(parents=True)
    (out / "kernels/d64/attention.json").write_text("{}")
    assert reproduce.kernel_tables(out, run=False) == own


def test_sweeps_measures_only_the_named_ones(tmp_path, monkeypatch):
    from benchmarks import reproduce
    asked = []
    monkeypatch.setattr(reproduce, "bench", lambda out_dir, args, run: (asked.append((out_dir.name, run)), (None, None))[1])
    sweeps(tmp_path, run=True, only=["causal", "grid"])
    assert {name for name, run in asked if run} == {"causal", "grid"} and len(asked) == len(SWEEPS)
    with pytest.raises(SystemExit) as e:
        reproduce.main([str(tmp_path), "--only", "sweeps", "--sweeps", "causal,nope"])
    assert e.value.code == 2


def test_figure3_reading_is_computed_from_its_rows():
    data = [r for r in rows(seqlen=[2048, 4096]) if not r["causal"] and r["provider"] != "flash1"]
    data.append(dict(provider="naive", head_dim=64, heads=12, causal=False, seqlen=8192, batch=2, error="OOM"))
    flash_4k = next(r for r in data if r["provider"] == "flash" and r["seqlen"] == 4096)
    data.append({**flash_4k, "provider": "flash-butterfly", "ms_fwd+bwd": flash_4k["ms_fwd+bwd"] * 0.3, "density": 0.25})
    data.append(dict(provider="sdpa-flash", head_dim=64, heads=12, causal=False, seqlen=1024, batch=16,
                     error="RuntimeError: No available kernel"))
    assert figure3_claims(data) == [
        "- flash: memory beyond the inputs 204800-409600 MB at N = 2048-4096",
        "- against standard attention (naive), N = 2048-4096: 15.0x faster fwd+bwd, 1.0x less memory; "
        "naive runs out of memory from N = 8192",
        "- flash's fwd+bwd time / sdpa-flash's: 0.83 (N = 2048-4096; below 1: ours faster)",
        "- flash's fwd+bwd time / sdpa-cudnn's: 1.07 (N = 2048-4096; below 1: ours faster)",
        "- flash-butterfly: at density rho it takes rho + (0.050) of flash's fwd+bwd time (N = 4096)"]
    assert figure3_claims([r for r in data if r["provider"] != "flash"]) == []


def test_the_first_report_maps_the_figures_it_draws(tmp_path):
    """One --report-only over committed sequence-length tables draws the seed figures and its
    map says so in the same call (the map is made after the figures, not before)."""
    from benchmarks import reproduce
    meta = dict(device="GPU X", date="2026-01-01", torch="2", triton="3", command="python -m benchmarks.bench_attention ...")
    (tmp_path / "kernels" / "d64").mkdir(parents=True)
    (tmp_path / "kernels" / "d64" / "attention.json").write_text(json.dumps({"meta": meta, "rows": rows(seqlen=[512, 1024])}))
    reproduce.main([str(tmp_path), "--report-only"])
    report = (tmp_path / "report.md").read_text()
    for figure in ("kernels/speedup_bars.png", "kernels/fa1_vs_fa2.png", "kernels/fwd_vs_bwd.png"):
        assert (tmp_path / figure).is_file()
        assert next(line for line in report.splitlines() if line.startswith("| ") and f"| {figure} |" in line).endswith("| yes |")
