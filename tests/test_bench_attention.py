"""benchmarks/bench_attention.py without a GPU: repeated timings and their spread."""


def test_a_point_whose_timings_disagree_is_timed_again_then_marked():
    from benchmarks.bench_attention import repeated
    steady = iter([1.00, 1.02, 1.01])
    median, spread, times = repeated(lambda: next(steady))
    assert median == 1.01 and len(times) == 3 and spread < 0.05
    noisy = iter([1.0, 1.2, 1.0, 1.3, 1.0])
    median, spread, times = repeated(lambda: next(noisy))
    assert len(times) == 5 and spread > 0.05  # two more timings, still apart: the row is marked unstable
