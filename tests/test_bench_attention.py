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
