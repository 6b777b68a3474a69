"""How long the token cache's checksum takes when a split is opened (data/prepare.py: verified).

    python -m benchmarks.cache_check --tokens 108329182     # the Gutenberg train split's size

Writes a split of random tokens of that size (as data/prepare.py writes one) and times
verified() on it three times (the file in the page cache, as it is at the start of a run
that just prepared or read it)."""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from data.prepare import _write_split, verified


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=108_329_182)
    a = p.parse_args(argv)
    tokens = np.random.default_rng(0).integers(0, 50257, a.tokens, dtype=np.uint16)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.bin"
        _write_split(path, [tokens], {"source": "random"})
        times = []
        for _ in range(3):
            start = time.perf_counter()
            assert verified(path)["tokens"] == a.tokens
            times.append(time.perf_counter() - start)
    print(f"{a.tokens:,} tokens ({2 * a.tokens / 1e6:.0f} MB): verified in {min(times):.3f}-{max(times):.3f} s "
          f"({platform.processor() or platform.machine()}, {platform.python_version()})")


if __name__ == "__main__":
    main()
