"""benchmarks/cache_check.py: times the token cache's checksum on a split it writes."""

from benchmarks import cache_check


def test_prints_the_verify_time(capsys):
    cache_check.main(["--tokens", "5000"])
    assert "5,000 tokens (0 MB): verified in" in capsys.readouterr().out
