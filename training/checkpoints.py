"""A run's checkpoints: ckpt-<step>.pt files in its directory, the newest train.keep_checkpoints kept,
and ckpt.pt linking to the newest written.

Each is one torch.save file with the full (unsharded) model and optimizer state keyed by
parameter name (torch.distributed.checkpoint's full state dicts, gathered to rank 0), so a
checkpoint written by 8 FSDP ranks loads into one process and the other way round; beside
them the step, the batch generator all ranks share, each rank's RNG states,
the config and the wandb run id.

Written atomically (a temporary file, fsync, rename): a kill mid-write leaves the earlier
files intact. Checked before use (each zip member's CRC-32; torch.save writes a zip whose
reader does not check them): a truncated or corrupt file gets one line naming it and the
newest good one is used.
"""

import os
import re
import sys
import zipfile
from pathlib import Path

import torch

from training import distributed

NAME = "ckpt-{step:08d}.pt"
LATEST = "ckpt.pt"  # a relative symlink to the newest one written
PATTERN = re.compile(r"ckpt-(\d+)\.pt")


def saved(run_dir):
    """[(step, path)] of the run's checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("ckpt-*.pt") if (m := PATTERN.fullmatch(p.name))]
    return sorted(found)


def problem(path):
    """Why `path` is not a usable checkpoint, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"truncated or not a checkpoint: {e}"
    return f"corrupt: CRC mismatch in {bad}" if bad else None


def newest(run_dir, set_aside=False):
    """The newest checkpoint that passes the check, or None when there is none at all;
    each one passed over is named in one line on stderr and, with set_aside (a run about to
    resume, whose later saves would otherwise rank below it), renamed to *.corrupt, kept for
    inspection. Raises when checkpoints exist but none is good."""
    found = saved(run_dir)
    for _, path in reversed(found):
        why = problem(path)
        if why is None:
            return path
        print(f"checkpoint {path} is unusable ({why}); "
              f"{'set aside as ' + path.name + '.corrupt; ' if set_aside else ''}trying the one before it",
              file=sys.stderr, flush=True)
        if set_aside:
            path.rename(path.with_name(path.name + ".corrupt"))
    if found:
        raise RuntimeError(f"no usable checkpoint in {run_dir}: all {len(found)} failed the check (named above)")
    return None


def capture(model, optimizer):
    """(model, optimizer) full state dicts keyed by parameter name, on the CPU; under FSDP a
    collective that gathers the shards to rank 0 (the other ranks get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def restore(ckpt, model, optimizer):
    """capture()'s inverse, for any world size and parallelism."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))


def save(run_dir, step, state, keep):
    """Writes ckpt-<step>.pt atomically and removes all but the newest `keep`; returns its path."""
    path = Path(run_dir) / NAME.format(step=step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(run_dir, os.O_RDONLY)  # the rename itself survives a crash of the machine
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for _, old in saved(run_dir)[:-keep]:
        old.unlink()
    for stale in Path(run_dir).glob("ckpt-*.pt.tmp"):  # a write a kill cut short
        stale.unlink()
    link = path.with_name(LATEST + ".tmp")  # ckpt.pt: the newest, for `export RUN/ckpt.pt` and the like
    link.unlink(missing_ok=True)
    link.symlink_to(path.name)
    os.replace(link, path.with_name(LATEST))
    return path


def load(path):
    # RNG states must stay CPU tensors; the state dicts copy to their parameters' devices.
    return torch.load(path, map_location="cpu", weights_only=False)


ARCH = ("n_layer", "n_head", "n_embd")


def weights(path):
    """(model state dict in our layout, architecture dict, description) of a checkpoint file or
    of a run directory's newest good one; None when `path` is neither. Raises ValueError naming
    a file that is not a usable checkpoint."""
    path = Path(path)
    if path.is_dir():
        if not saved(path):
            return None
        path = newest(path)
    if not path.is_file():
        return None
    if path.suffix == ".pt" and (why := problem(path)):
        raise ValueError(f"init_from: checkpoint {path} is {why}")
    try:
        ckpt = load(path)
    except Exception as e:
        raise ValueError(f"init_from: cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"init_from: {path} is not a checkpoint of train.py (no 'model' and 'config')")
    cfg, sd = ckpt["config"], ckpt["model"]
    if cfg["model"].get("impl") == "hf":  # transformers' GPT-2 trained here (model.impl=hf): its layout
        from model.pretrained import from_hf_state_dict
        sd = from_hf_state_dict({k.removeprefix("hf."): v for k, v in sd.items()})
    arch = {k: cfg["model"][k] for k in ARCH} | {"context": cfg["context"]}
    return sd, arch, f"checkpoint {path} (step {ckpt.get('step')})"


def _rng_states():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def write(run_dir, step, d, keep, model, optimizer, *, batch_rng, config, wandb_id, train_time_s):
    """Every rank calls it (FSDP gathers its shards); rank 0 writes ckpt-<step>.pt. What a
    checkpoint holds, every key: model, optimizer (full state dicts by parameter name), step,
    each rank's RNG states (rng) and the world size, the batch generator's state all ranks
    share (batch_rng), the resolved config, the wandb run id and the training time so far.
    The learning rate is a function of the step and the config (training/loop.py: lr_at)."""
    model_state, optimizer_state = capture(model, optimizer)
    rng = distributed.gather(_rng_states(), d)  # each rank's: dropout differs across ranks
    if d.main:
        save(run_dir, step, {"model": model_state, "optimizer": optimizer_state, "step": step, "rng": rng,
                             "world": d.world, "batch_rng": batch_rng, "config": config, "wandb_id": wandb_id,
                             "train_time_s": train_time_s}, keep)
    distributed.barrier(d)  # a rank that exits after this (preemption) leaves the file written


def resume(run_dir, d, model, optimizer, seed):
    """Loads the newest good checkpoint into model and optimizer (rank 0 picks it, every rank
    reads it) and restores this rank's RNG states; returns (checkpoint without its model and
    optimizer states, path). At another world size the RNG states are reseeded from
    (seed, rank, step) instead."""
    path = distributed.from_main(newest(run_dir, set_aside=True) if d.main else None, d)
    if path is None:
        raise FileNotFoundError(f"no checkpoint (ckpt-*.pt) in {run_dir}")
    ckpt = load(path)
    restore(ckpt, model, optimizer)
    if len(ckpt["rng"]) == d.world:
        torch.set_rng_state(ckpt["rng"][d.rank]["cpu"])
        if ckpt["rng"][d.rank]["cuda"] is not None and d.device.startswith("cuda"):
            torch.cuda.set_rng_state(ckpt["rng"][d.rank]["cuda"])
    else:
        torch.manual_seed(seed + 1000003 * ckpt["step"] + d.rank)
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}, path
