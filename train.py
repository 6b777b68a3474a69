"""Train GPT-2 with a chosen attention backend.

    python train.py attention=flash context=4096
    python train.py model=gpt2-tiny data=owt-sample train.device=cpu train.max_steps=20
    python train.py -m attention=naive,sdpa,flash        # a sweep, one run each
    python train.py experiment=finetune train.init_from=runs/RUN data=local data.train_files=[my.jsonl]
    torchrun --nproc_per_node=8 train.py [train.parallel=fsdp] ...      # data-parallel, same global batch

Logs loss, perplexity, tokens/s, MFU and peak memory to wandb and to metrics.jsonl in the
run directory; checkpoints there too (train.resume=true continues from the newest good one;
SIGTERM or SIGUSR1 ends a run after its step with a checkpoint). One home each for the
distributed setup (training/distributed.py), checkpoints (training/checkpoints.py),
signals (training/preemption.py) and metrics (training/logger.py), so that run() below reads
as the loop.
"""

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.distributed.tensor import DTensor

from attention import BACKENDS, PACKED
from data.batches import TrainBatches, check_length, eval_batches, tokens
from data.prepare import prepare
from model import GPT, GPTConfig, peak_flops
from model.hf import HFGPT
from model.pretrained import load_into
from training import checkpoints, distributed
from training.logger import Logger
from training.preemption import Preemption


def build_model(cfg):
    if cfg.attention.name not in BACKENDS:
        raise ValueError(f"unknown attention backend {cfg.attention.name!r}; available: {', '.join(BACKENDS)}")
    m = cfg.model
    impl = {"ours": GPT, "hf": HFGPT}.get(m.get("impl", "ours"))
    if impl is None:
        raise ValueError(f"unknown model.impl {m.impl!r}: ours (this project's GPT-2) | hf (transformers' GPT2LMHeadModel)")
    return impl(GPTConfig(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, context=cfg.context,
                         dropout=m.dropout, attn_dropout=m.attn_dropout, vocab_multiple=m.vocab_multiple,
                         cross_entropy=m.cross_entropy, xent_chunk=m.xent_chunk, qkv_packed=m.qkv_packed,
                         attention=cfg.attention.name,
                         attention_options=OmegaConf.to_container(cfg.attention.options)))


def init_weights(model, t):
    """train.init_from: our checkpoint, a transformers GPT-2 folder or hf:NAME (model/pretrained.py)."""
    if not isinstance(model, GPT):
        raise ValueError("train.init_from loads into our model (model.impl=ours); model.impl=hf starts from our init")
    source = t.init_from if str(t.init_from).startswith("hf:") else to_absolute_path(os.path.expanduser(t.init_from))
    return load_into(model, source, t.init_positions)


def compiler(t, on_cuda):
    """(a function putting a model's forward under torch.compile when train.compile says so
    (auto: on CUDA, where it is the faster path: benchmarks/results/h100/train-speed), or
    leaving it as it is; its description)."""
    if not (on_cuda if t.compile == "auto" else bool(t.compile)):
        return (lambda model: model), "eager"
    mode = None if t.compile_mode == "default" else t.compile_mode
    return (lambda model: torch.compile(model, mode=mode)), f"torch.compile ({t.compile_mode})"


def compiled(model, t, on_cuda):
    """(the model as train.compile says, its description)."""
    compile, how = compiler(t, on_cuda)
    return compile(model), how


def train_step(fwd, model, optimizer, batches, accum, grad_clip, autocast, sync=None):
    """One optimizer step over `accum` micro-batches; returns (mean loss, grad norm or None) as
    device tensors (reading them is left to the caller: a read waits for the GPU). `sync`:
    distributed.wrap's, so that ranks reduce gradients in the last micro-batch only."""
    loss_sum = 0.0
    for i in range(accum):
        if sync:
            sync(i == accum - 1)
        x, y = next(batches)
        with autocast:
            loss = fwd(x, y)
        (loss / accum).backward()
        loss_sum += loss.detach()
    grad_norm = clip_and_step(model, optimizer, grad_clip)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / accum, grad_norm


def clip_and_step(model, optimizer, max_norm):
    """Clip the gradients' global norm to max_norm (0: no clipping) and step; returns the norm.
    A fused AdamW divides each gradient by `optimizer.grad_scale` as it reads it (the hook
    torch.amp.GradScaler uses), so the clip costs one norm pass and no rescaling pass over the
    gradients; other optimizers, and FSDP's sharded gradients, rescale in place first
    (clip_grad_norm_, whose norm over shards is a DTensor)."""
    if not max_norm:
        optimizer.step()
        return None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not optimizer.defaults.get("fused") or any(isinstance(g, DTensor) for g in grads):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    norm = torch.nn.utils.get_total_norm(grads)
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # clip_grad_norm_'s coefficient, inverted
    optimizer.step()
    del optimizer.grad_scale
    return norm


def batch_shape(cfg, world=1):
    """(sequences per micro-batch, micro-batches per step on each rank) from the token budgets:
    train.batch_tokens is the global batch, the same at every world size."""
    t = cfg.train
    if t.micro_batch_tokens % cfg.context or t.batch_tokens % (t.micro_batch_tokens * world):
        raise ValueError(f"train.micro_batch_tokens ({t.micro_batch_tokens}) must be a multiple of context "
                         f"({cfg.context}) and divide train.batch_tokens ({t.batch_tokens})"
                         + (f" / {world} ranks" if world > 1 else ""))
    return t.micro_batch_tokens // cfg.context, t.batch_tokens // (t.micro_batch_tokens * world)


def lr_schedule(optimizer, t):
    """Linear warmup, then cosine decay to min_lr at max_steps."""
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, t.max_steps - t.warmup_steps), eta_min=t.min_lr)
    if t.warmup_steps == 0:
        return decay
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / t.warmup_steps, total_iters=t.warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[t.warmup_steps])


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


def load_data(cfg, d):
    """(train, val) token memmaps; rank 0 tokenizes the corpus first (cached), the others read its cache."""
    data_cfg = cfg.data.copy()  # relative paths are relative to where train.py was started
    data_cfg.cache_dir = to_absolute_path(os.path.expanduser(data_cfg.cache_dir))
    if data_cfg.get("root"):
        data_cfg.root = to_absolute_path(os.path.expanduser(data_cfg.root))
    if not d.main:
        distributed.barrier(d)
    paths = prepare(data_cfg)
    if d.main:
        distributed.barrier(d)
    train_data, val_data = tokens(paths["train"]), tokens(paths["val"])
    check_length(train_data, cfg.context, "train")
    check_length(val_data, cfg.context, "val")
    return train_data, val_data


def resuming(t, out_dir, d):
    """Whether this run continues from a checkpoint: train.resume true | false | auto (if one exists)."""
    if t.resume not in (True, False, "auto"):
        raise ValueError(f"train.resume={t.resume!r}: true | false | auto")
    found = bool(checkpoints.saved(out_dir))
    if t.resume is True and not found:
        raise FileNotFoundError(f"train.resume=true but there is no checkpoint (ckpt-*.pt) in {out_dir}")
    return t.resume is True or (t.resume == "auto" and found)


def train(cfg: DictConfig):
    t = cfg.train
    if t.device == "auto":  # resolved into the saved config, so that readers see what ran
        t.device = "cuda" if torch.cuda.is_available() else "cpu"
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    if t.device == "cpu" and cfg.attention.name in ("flash", "flash1"):  # before any data is prepared
        raise ValueError(f"attention={cfg.attention.name} runs our Triton kernels in fp16/bf16 on a CUDA GPU; "
                         "training on the CPU is float32: use attention=sdpa or attention=naive there")
    d = distributed.setup(t.device, t.parallel)
    preemption = Preemption()  # from here on, SIGTERM / SIGUSR1 end the run after a step with a checkpoint
    try:
        return run(cfg, d, preemption)
    finally:
        preemption.close()
        distributed.teardown(d)


def run(cfg, d, preemption):
    t, device = cfg.train, d.device
    out_dir = Path(to_absolute_path(t.out_dir))
    micro_batch, accum = batch_shape(cfg, d.world)
    if d.main:  # the resolved config beside metrics.jsonl: what benchmarks/compare_runs.py reads
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=1))
    resume = resuming(t, out_dir, d)
    train_data, val_data = load_data(cfg, d)

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = build_model(cfg)
    say = (lambda *text: print(*text, flush=True)) if d.main else (lambda *text: None)  # rank 0 prints
    if t.init_from and not resume:  # weights only: optimizer, schedule and step start fresh
        say(init_weights(model, t))
    model.to(device)
    on_cuda = device.startswith("cuda")
    compile, how = compiler(t, on_cuda)
    fwd, sync = distributed.wrap(model, d, compile, t.ddp_bucket_mb)
    optimizer = model.optimizer(t.lr, t.weight_decay, t.betas, "cuda" if on_cuda else "cpu")
    scheduler = lr_schedule(optimizer, t)
    batch_gen = torch.Generator().manual_seed(t.seed)  # one generator on every rank: data.batches says why
    step, run_id, train_time = 0, None, 0.0
    if resume:
        ckpt, path = checkpoints.resume(out_dir, d, model, optimizer, scheduler, t.seed)
        batch_gen.set_state(ckpt["batch_rng"])
        step, run_id, train_time = ckpt["step"], ckpt["wandb_id"], ckpt["train_time_s"]
        say(f"resumed from {path} at step {step}")
    elif d.world > 1:
        torch.manual_seed(t.seed + d.rank)  # dropout masks differ across ranks

    dtype = getattr(torch, t.dtype)
    autocast = torch.autocast("cuda", dtype=dtype) if on_cuda and dtype != torch.float32 else nullcontext()
    batches = TrainBatches(train_data, micro_batch, cfg.context, batch_gen, device, prefetch=t.prefetch,
                           accum=accum, rank=d.rank, world=d.world)
    peak = peak_flops(torch.cuda.get_device_name()) if on_cuda else None  # None: an unknown GPU, no MFU
    peak = peak * d.world if peak else None  # MFU per GPU: tokens/s is the world's
    flops_per_token = model.flops_per_token(cfg.context)
    logger = Logger(cfg, out_dir, run_id, enabled=d.main)
    run_id = logger.run_id
    mc = model.cfg
    loss_path = (f"cross-entropy {mc.cross_entropy}{' (fused on CUDA)' if mc.cross_entropy == 'auto' else ''}, "
                 f"vocabulary padded to {mc.padded_vocab}") if isinstance(model, GPT) else "fp32 cross-entropy"
    ranks = f"{d.world} ranks ({d.parallel}) x " if d.world > 1 else ""
    packed = " on packed QKV" if isinstance(model, GPT) and mc.qkv_packed and cfg.attention.name in PACKED else ""
    say(f"{model.num_params():,} parameters ({type(model).__name__.removeprefix('FSDP')}) | "
        f"{cfg.attention.name} attention{packed} | context {cfg.context} | {ranks}{micro_batch} x {cfg.context} tokens x "
        f"{accum} micro-batches per step | {how} | {loss_path} | {t.dtype} | "
        f"{'prefetched' if t.prefetch else 'synchronous'} batches | run dir {out_dir}")

    def checkpoint():
        checkpoints.write(out_dir, step, d, t.keep_checkpoints, model, optimizer, scheduler,
                          batch_rng=batches.rng_state(), config=OmegaConf.to_container(cfg, resolve=True),
                          wandb_id=run_id, train_time_s=train_time)

    model.train()
    stop_at = t.max_steps if not t.steps_per_run else min(t.max_steps, step + t.steps_per_run)
    interval_start, interval_steps = time.perf_counter(), 0
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    while step < stop_at:
        step_start = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm = train_step(fwd, model, optimizer, batches, accum, t.grad_clip, autocast, sync)
        scheduler.step()
        step += 1
        interval_steps += 1

        if step % t.log_every == 0 or step == t.max_steps:
            loss = distributed.mean(loss, d).item()  # syncs the device: the interval's time is real
            now = time.perf_counter()
            train_time += now - interval_start
            tokens_per_s = interval_steps * t.batch_tokens / (now - interval_start)
            metrics = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50)), "lr": lr,
                       "grad_norm": grad_norm.item() if grad_norm is not None else float("nan"),
                       "tokens_per_s": tokens_per_s,
                       "step_ms": 1000 * (now - step_start), "tokens_seen": step * t.batch_tokens,
                       "train_time_s": train_time}
            if peak:
                metrics["mfu"] = flops_per_token * tokens_per_s / peak
            if on_cuda:  # rank 0's
                metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            logger.log(metrics, step)
            say(f"step {step:6d} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
                + (f" | mfu {metrics['mfu']:.1%}" if peak else "")
                + (f" | mem {metrics['peak_mem_gb']:.2f} GB" if on_cuda else ""))
            interval_start, interval_steps = time.perf_counter(), 0
        if step % t.eval_every == 0 or step == t.max_steps:
            metrics = evaluate(model, val_data, micro_batch, cfg.context, device, autocast, t.eval_tokens,
                               by_position=step == t.max_steps, d=d)
            by_position = metrics.pop("val/loss_by_position", None)
            if by_position and d.main:  # a list: into its own file, not a wandb scalar
                (out_dir / "loss_by_position.json").write_text(json.dumps({"step": step, "loss": by_position}))
            logger.log({**metrics, "tokens_seen": step * t.batch_tokens, "train_time_s": train_time}, step)
            say(f"step {step:6d} | val loss {metrics['val/loss']:.4f} | val ppl {metrics['val/ppl']:.2f}")
            interval_start, interval_steps = time.perf_counter(), 0  # eval time is not throughput
        stop = preemption.requested(d)
        if step % t.ckpt_every == 0 or step == stop_at or stop:
            checkpoint()
        if stop:
            say(f"{stop}: stopped after step {step} with a checkpoint; train.resume=true continues")
            break
    batches.close()
    logger.close()
    return model


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    train(cfg)


if __name__ == "__main__":
    main()
