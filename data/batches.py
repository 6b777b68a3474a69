"""Batches of token windows from a cached uint16 token file.

Training draws random windows of context + 1 tokens (input and shifted target) with its own
torch.Generator, whose state goes into checkpoints so a resumed run sees the same batches.
TrainBatches gathers the next batch on a worker thread into pinned memory while the GPU runs
the current step, and copies it to the device without blocking.
Evaluation walks non-overlapping windows in order, so perplexity is comparable across runs.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def tokens(path):
    return np.memmap(path, dtype=np.uint16, mode="r")


def _to_device(xy, device):
    """(inputs, targets) on the device from the (B, T + 1) windows: one copy, pinned on CUDA."""
    if device.startswith("cuda"):
        xy = (xy if xy.is_pinned() else xy.pin_memory()).to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def check_length(data, context, split):
    if len(data) < context + 1:
        raise ValueError(f"the {split} split has {len(data)} tokens, fewer than context + 1 = {context + 1}; "
                         "use a smaller context or a larger corpus")


def _windows(data, starts, context, pin=False):
    """tokens[s : s+T+1] for each start s: a (B, T + 1) CPU tensor, inputs and shifted targets."""
    xy = torch.from_numpy(np.stack([data[s:s + context + 1] for s in starts]).astype(np.int64))
    return xy.pin_memory() if pin else xy


def random_batch(data, batch_size, context, generator, device):
    """`batch_size` random windows: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]."""
    starts = torch.randint(len(data) - context, (batch_size,), generator=generator).tolist()
    return _to_device(_windows(data, starts, context), device)


class TrainBatches:
    """An endless iterator of random_batch()es, the same sequence for the same generator state,
    with the next batch gathered ahead on a worker thread when `prefetch`. `rng_state()` is
    the generator state that reproduces the batches not yet returned (what a checkpoint needs,
    although the generator itself has already drawn one batch ahead)."""

    def __init__(self, data, batch_size, context, generator, device, prefetch=True):
        self.data, self.batch_size, self.context, self.gen, self.device = data, batch_size, context, generator, device
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if prefetch else None
        self.pin = device.startswith("cuda")
        self.pending = None  # (generator state before drawing it, future of the CPU batch)

    def _draw(self):
        state = self.gen.get_state()
        starts = torch.randint(len(self.data) - self.context, (self.batch_size,), generator=self.gen).tolist()
        return state, self.pool.submit(_windows, self.data, starts, self.context, self.pin)

    def __iter__(self):
        return self

    def __next__(self):
        if self.pool is None:
            return random_batch(self.data, self.batch_size, self.context, self.gen, self.device)
        if self.pending is None:
            self.pending = self._draw()
        _, ready = self.pending
        self.pending = self._draw()
        return _to_device(ready.result(), self.device)

    def rng_state(self):
        return self.gen.get_state() if self.pending is None else self.pending[0]

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def eval_batches(data, batch_size, context, device, max_tokens=None):
    """Non-overlapping windows from the start of the split, in order (at most max_tokens)."""
    n = (len(data) - 1) // context
    if max_tokens:
        n = min(n, max(1, max_tokens // context))
    for first in range(0, n, batch_size):
        starts = [w * context for w in range(first, min(n, first + batch_size))]
        yield _to_device(_windows(data, starts, context), device)
