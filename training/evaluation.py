"""Validation loss and perplexity: non-overlapping windows of the split in order, so numbers
are comparable across runs and world sizes (data/batches.eval_batches)."""

import math

import torch

from data.batches import eval_batches
from training import distributed


@torch.no_grad()
def evaluate(model, data, micro_batch, context, device, autocast, max_tokens, by_position=False,
             d=distributed.Dist()):
    """Mean validation loss and perplexity, each rank over its share of the windows; with
    by_position also the mean loss at each position of the window (from the logits: evidence
    of whether a longer context is used)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # sum of token losses (no sync per batch)
    per_position = torch.zeros(context, dtype=torch.float64, device=device)
    for x, y in eval_batches(data, micro_batch, context, device, max_tokens, d.rank, d.world):
        with autocast:
            out = model(x) if by_position else model(x, y)  # logits, or the loss from the fused path
        loss = out
        if by_position:
            losses = torch.nn.functional.cross_entropy(out.float().transpose(1, 2), y, reduction="none")
            per_position += losses.sum(0).double()
            loss = losses.mean()
        total += loss.double() * y.numel()
        count += y.numel()
    model.train()
    total, count = distributed.total(torch.stack([total, total.new_tensor(count)]), d).tolist()
    metrics = {"val/loss": total / count, "val/ppl": math.exp(total / count)}
    if by_position:
        metrics["val/loss_by_position"] = (distributed.total(per_position, d) * context / count).tolist()
    return metrics
