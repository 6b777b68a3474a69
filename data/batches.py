"""Batches of token windows from a cached uint16 token file.

Training draws random windows of context + 1 tokens (input and shifted target) with its own
torch.Generator, whose state goes into checkpoints so a resumed run sees the same batches.
TrainBatches gathers the next step's batches on a worker thread into pinned memory while the
GPU runs the current step, and copies them to the device without blocking; under torchrun
each rank takes its share of every step's windows.
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
        from data.prepare import DataError
        fix = ("name a larger validation file (data.val_files) or hold out more of the train documents "
               "(data.val_fraction)") if split == "val" else "add training files (data.train_files)"
        raise DataError(f"the {split} split has {len(data)} tokens, fewer than one window (context + 1 = "
                        f"{context + 1}): use a smaller context, or {fix}")


def _windows(data, starts, context, pin=False):
    """tokens[s : s+T+1] for each start s: a (B, T + 1) CPU tensor, inputs and shifted targets."""
    xy = torch.from_numpy(np.stack([data[s:s + context + 1] for s in starts]).astype(np.int64))
    return xy.pin_memory() if pin else xy


class TrainBatches:
    """An endless iterator of micro-batches of random windows, the same sequence for the same
    generator state, with the next step's batches gathered ahead on a worker thread when
    `prefetch`.

    Windows are drawn a whole optimizer step at a time: `batch_size * accum * world` starts
    from the one generator every rank seeds alike, of which rank r takes the r-th share, in
    `accum` micro-batches. So ranks train on different windows, and a step sees the same
    windows at any world size (1 rank x 2 micro-batches = 2 ranks x 1): runs at different
    world sizes follow one curve, and a checkpoint resumes at another world size.
    `rng_state()` is the generator state that reproduces the steps not yet begun (what a
    checkpoint taken between steps needs; the generator itself may have drawn one step ahead)."""

    def __init__(self, data, batch_size, context, generator, device, prefetch=True, accum=1, rank=0, world=1):
        self.data, self.batch_size, self.context, self.gen, self.device = data, batch_size, context, generator, device
        self.accum, self.rank, self.world = accum, rank, world
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if prefetch else None
        self.pin = device.startswith("cuda")
        self.current = []     # this step's micro-batches not yet returned (CPU tensors or futures)
        self.pending = None   # (generator state before drawing it, the next step's micro-batches)

    def _draw(self):
        """The next step's micro-batches for this rank, with the generator state before them."""
        state = self.gen.get_state()
        share = self.batch_size * self.accum
        starts = torch.randint(len(self.data) - self.context, (share * self.world,), generator=self.gen)
        mine = starts[self.rank * share:(self.rank + 1) * share].tolist()
        micro = [mine[i:i + self.batch_size] for i in range(0, share, self.batch_size)]
        if self.pool is None:
            return state, [_windows(self.data, s, self.context) for s in micro]
        return state, [self.pool.submit(_windows, self.data, s, self.context, self.pin) for s in micro]

    def __iter__(self):
        return self

    def __next__(self):
        if not self.current:
            _, self.current = self.pending or self._draw()
            self.pending = self._draw() if self.pool is not None else None
        xy = self.current.pop(0)
        return _to_device(xy if self.pool is None else xy.result(), self.device)

    def rng_state(self):
        if self.current:
            raise RuntimeError("rng_state() is defined between optimizer steps, not inside one")
        return self.gen.get_state() if self.pending is None else self.pending[0]

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def eval_batches(data, batch_size, context, device, max_tokens=None, rank=0, world=1):
    """Non-overlapping windows from the start of the split, in order (at most max_tokens);
    over `world` ranks, rank r gets the r-th of `world` equal contiguous shares (the count is
    rounded down to a multiple of world, so every rank runs as many forwards: FSDP needs it)."""
    n = (len(data) - 1) // context
    if max_tokens:
        n = min(n, max(1, max_tokens // context))
    share = n // world
    if share == 0:
        raise ValueError(f"{n} evaluation windows cannot be shared by {world} ranks; use a longer split or fewer ranks")
    first, last = rank * share, (rank + 1) * share
    for begin in range(first, last, batch_size):
        starts = [w * context for w in range(begin, min(last, begin + batch_size))]
        yield _to_device(_windows(data, starts, context), device)
