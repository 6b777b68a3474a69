"""benchmarks/bench_attention.py without a GPU: repeated timings and their spread."""


def test_a_point_whose_timings_disagree_is_timed_again_then_marked():
    from benchmarks.bench_attention import repeated
    steady = iter([1.00, 1.02, 1.01])
    median, spread, times = repeated(lambda: next(steady))
    assert median == 1.01 and len(times) == 3 and spread < 0.05
    noisy = iter([1.0, 1.2, 1.0, 1.3, 1.0])
    median, spread, times = repeated(lambda: next(noisy))
    assert len(times) == 5 and spread > 0.05  # two more timings, still apart: the row is marked unstable


def test_figure3_setting_runs_every_masked_provider_on_the_same_mask():
    """The paper's Figure 3 setting (non-causal, dropout, a padding mask): our kernel takes the
    padding as documents and matches naive attention given the same mask (dropout off for the
    comparison); the butterfly provider runs block-sparse on its layout."""
    import pytest
    import torch
    from benchmarks.bench_attention import butterfly_layout, padding_kwargs, providers
    from tests.conftest import GPU, INTERPRET
    if not (GPU or INTERPRET):
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")
    device, n = ("cuda", 256) if GPU else ("cpu", 48)
    kw = padding_kwargs(True, 2, n, device)
    start, end = kw["documents"]
    assert (end[:, 0] >= n - 20).all() and (end[:, 0] < n).all() and (start[:, 0] == 0).all()
    fns = providers(["flash", "naive", "flash-butterfly"])
    q, k, v = (torch.randn(2, n, 2, 16, device=device, dtype=torch.float16) for _ in range(3))
    o = fns["flash"](q, k, v, **kw)
    ref = fns["naive"](q, k, v, **kw)
    assert (o.float() - ref.float()).abs().max() < 2e-2
    assert not torch.allclose(o, fns["flash"](q, k, v), atol=2e-2)  # the mask changes the result
    fns["flash-butterfly"](q, k, v, dropout_p=0.1, **kw).float().sum().item()  # runs (the padding is not applied)
    assert 0 < butterfly_layout(1024, False, "cpu").density <= 1


def test_resume_measures_only_the_points_a_cut_run_left(tmp_path, monkeypatch, capsys):
    import json
    import sys

    import pytest
    from benchmarks import bench_attention
    measured = []

    def measure(fn, batch, heads, n, *a, **kw):
        if n == 256 and len(measured) == 1 and not resumed:
            raise KeyboardInterrupt  # the machine's time limit, after the first point
        measured.append(n)
        return {m: 1.0 for m in bench_attention.MODES}, 0, {m: 0.0 for m in bench_attention.MODES}
    monkeypatch.setattr(bench_attention, "measure", measure)
    monkeypatch.setattr(bench_attention, "plot", lambda rows, path: None)
    args = ["bench_attention", "--providers", "naive", "--shapes", "16x2", "--causal", "0", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*args, "--seqlens", "128"])
    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench_attention.main()  # without a GPU: one line, nothing written
    assert "measures kernels on a CUDA GPU and none is visible" in capsys.readouterr().err
    assert not measured and not (tmp_path / "attention.json").exists()
    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: True)  # with measure, a stand-in GPU
    monkeypatch.setattr(bench_attention.torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    resumed = False
    monkeypatch.setattr(sys, "argv", [*args, "--seqlens", "128,256", "--resume"])
    with pytest.raises(KeyboardInterrupt):
        bench_attention.main()
    assert measured == [128] and len(json.loads((tmp_path / "attention.json").read_text())["rows"]) == 1
    resumed = True
    bench_attention.main()  # the same command again: only the point it had not reached
    data = json.loads((tmp_path / "attention.json").read_text())
    assert measured == [128, 256] and [r["seqlen"] for r in data["rows"]] == [128, 256]
    assert "--resume" not in data["meta"]["command"]
    monkeypatch.setattr(sys, "argv", [*args, "--seqlens", "128", "--resume"])
    bench_attention.main()  # another command: nothing of the old table is kept
    assert measured == [128, 256, 128] and len(json.loads((tmp_path / "attention.json").read_text())["rows"]) == 1


def test_gluon_providers_run_their_backward_under_their_options(monkeypatch):
    """flash-gluon-bwd's options hold while autograd runs the call's backward, and are back to
    what they were after it, so the other providers of the run keep theirs (flash: the defaults)."""
    import pytest
    import torch
    from attention import flash
    from benchmarks.bench_attention import providers
    from tests.conftest import GPU, INTERPRET
    if not (GPU or INTERPRET):
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")
    seen, real = [], flash._flash2_bwd
    monkeypatch.setattr(flash, "_flash2_bwd", lambda *a, **kw: seen.append(flash.options["gluon_backward"]) or real(*a, **kw))
    device = "cuda" if GPU else "cpu"
    q, k, v = (torch.randn(1, 32, 2, 16, device=device, dtype=torch.float16, requires_grad=True) for _ in range(3))
    fns = providers(["flash-gluon-bwd", "flash"])
    fns["flash-gluon-bwd"](q, k, v, causal=True).sum().backward()
    fns["flash"](q, k, v, causal=True).sum().backward()
    assert seen == [True, False] and flash.options["gluon_backward"] is False
    forward, real_fwd = [], flash._flash2_fwd
    monkeypatch.setattr(flash, "_flash2_fwd", lambda *a, **kw: forward.append(flash.options["gluon"]) or real_fwd(*a, **kw))
    portable = providers(["flash-portable"])["flash-portable"]   # get_attention resets the options: set them after
    flash.configure(gluon="auto")
    portable(q, k, v, causal=True)
    assert forward == ["off"] and flash.options["gluon"] == "auto"   # what it found, back for the others
    flash.configure()


def test_the_forward_alone_times_only_the_forward(tmp_path, monkeypatch, capsys):
    """--modes fwd (the FA2 lab reports' forward-pass grid): measure is asked for the forward
    only, the rows and the table hold only it, and a mode that does not exist is refused."""
    import json
    import sys

    import pytest
    from benchmarks import bench_attention
    asked = []

    def measure(*a, modes, **kw):
        asked.append(modes)
        return {m: 1.0 for m in modes}, 0, {m: 0.0 for m in modes}
    monkeypatch.setattr(bench_attention, "measure", measure)
    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_attention.torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    args = ["bench_attention", "--providers", "naive", "--shapes", "16x2", "--causal", "0", "--seqlens", "128",
            "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*args, "--modes", "fwd"])
    bench_attention.main()
    row, = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert asked == [("fwd",)] and "tflops_fwd" in row and "ms_bwd" not in row and "tflops_fwd+bwd" not in row
    assert (tmp_path / "attention.png").stat().st_size > 0
    monkeypatch.setattr(sys, "argv", [*args, "--modes", "fwd,backward"])
    with pytest.raises(SystemExit):
        bench_attention.main()
    assert "--modes fwd,backward: a comma-separated choice of fwd, bwd, fwd+bwd" in capsys.readouterr().err


def test_a_switch_times_every_provider_under_each_value_side_by_side(tmp_path, monkeypatch, capsys):
    """--switch MODULE.NAME=A,B: at each point every provider is timed with the attribute set to
    A, then to B (set during the timing only); rows and table name the setting; a switch that
    does not exist is refused in one line."""
    import json
    import sys
    import types

    import pytest
    from benchmarks import bench_attention
    module = types.ModuleType("a_kernel_module")
    module.ORDER = "old"
    monkeypatch.setitem(sys.modules, "a_kernel_module", module)
    seen = []

    def measure(fn, batch, heads, n, *a, modes, **kw):
        seen.append((n, module.ORDER))
        ms = 1.0 if module.ORDER == "old" else 0.8  # the new order: 1.25x the TFLOP/s
        return {m: ms for m in modes}, 0, {m: 0.0 for m in modes}
    monkeypatch.setattr(bench_attention, "measure", measure)
    monkeypatch.setattr(bench_attention, "plot", lambda rows, path: None)
    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_attention.torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    args = ["bench_attention", "--providers", "naive,flash", "--shapes", "16x2", "--causal", "0", "--seqlens", "128,256",
            "--modes", "bwd", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*args, "--switch", "a_kernel_module.ORDER='old','new'"])
    bench_attention.main()
    assert seen == [(n, order) for n in (128, 256) for _ in ("naive", "flash") for order in ("old", "new")]
    assert module.ORDER == "old"  # put back after each timing
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert [r["provider"] for r in rows[:4]] == ["naive ORDER='old'", "naive ORDER='new'", "flash ORDER='old'",
                                                 "flash ORDER='new'"]
    table = (tmp_path / "attention.md").read_text()
    assert "| flash | 16 | 0 | 256 | bwd |" in table and table.count("| 1.250 |") == 4
    for bad in ("a_kernel_module.NOPE=1,2", "ORDER=1,2"):
        monkeypatch.setattr(sys, "argv", [*args, "--switch", bad])
        with pytest.raises(SystemExit):
            bench_attention.main()
    assert "a_kernel_module has no NOPE" in capsys.readouterr().err
