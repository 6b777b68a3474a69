"""Batches of token windows from a cached uint16 token file.

Training draws random windows of context + 1 tokens (input and shifted target) with its own
torch.Generator, whose state goes into checkpoints so a resumed run sees the same batches.
Evaluation walks non-overlapping windows in order, so perplexity is comparable across runs.
"""

import numpy as np
import torch


def tokens(path):
    return np.memmap(path, dtype=np.uint16, mode="r")


def _to_device(x, y, device):
    if device.startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def check_length(data, context, split):
    if len(data) < context + 1:
        raise ValueError(f"the {split} split has {len(data)} tokens, fewer than context + 1 = {context + 1}; "
                         "use a smaller context or a larger corpus")


def random_batch(data, batch_size, context, generator, device):
    """`batch_size` random windows: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]."""
    starts = torch.randint(len(data) - context, (batch_size,), generator=generator).tolist()
    x = torch.stack([torch.from_numpy(data[s:s + context].astype(np.int64)) for s in starts])
    y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + context].astype(np.int64)) for s in starts])
    return _to_device(x, y, device)


def eval_batches(data, batch_size, context, device, max_tokens=None):
    """Non-overlapping windows from the start of the split, in order (at most max_tokens)."""
    n = (len(data) - 1) // context
    if max_tokens:
        n = min(n, max(1, max_tokens // context))
    for first in range(0, n, batch_size):
        starts = [w * context for w in range(first, min(n, first + batch_size))]
        x = torch.stack([torch.from_numpy(data[s:s + context].astype(np.int64)) for s in starts])
        y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + context].astype(np.int64)) for s in starts])
        yield _to_device(x, y, device)
