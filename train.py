"""Train GPT-2 with a chosen attention backend.

    python train.py attention=flash context=4096
    python train.py model=gpt2-tiny data=owt-sample train.device=cpu train.max_steps=20
    python train.py -m attention=naive,sdpa,flash        # a sweep, one run each
    python train.py experiment=finetune train.init_from=runs/RUN data=local data.train_files=[my.jsonl]

Logs loss, perplexity, tokens/s, MFU and peak memory to wandb and to metrics.jsonl in the
run directory; checkpoints there too (train.resume=true continues from the last one).
"""

import json
import math
import statistics
import os
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from attention import BACKENDS
from data.batches import TrainBatches, check_length, eval_batches, tokens
from data.prepare import prepare
from model import GPT, GPTConfig, peak_flops
from model.hf import HFGPT
from model.pretrained import load_into

CKPT = "ckpt.pt"


def build_model(cfg):
    if cfg.attention.name not in BACKENDS:
        raise ValueError(f"unknown attention backend {cfg.attention.name!r}; available: {', '.join(BACKENDS)}")
    m = cfg.model
    impl = {"ours": GPT, "hf": HFGPT}.get(m.get("impl", "ours"))
    if impl is None:
        raise ValueError(f"unknown model.impl {m.impl!r}: ours (this project's GPT-2) | hf (transformers' GPT2LMHeadModel)")
    return impl(GPTConfig(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, context=cfg.context,
                         dropout=m.dropout, attn_dropout=m.attn_dropout, vocab_multiple=m.vocab_multiple,
                         cross_entropy=m.cross_entropy, xent_chunk=m.xent_chunk, attention=cfg.attention.name,
                         attention_options=OmegaConf.to_container(cfg.attention.options)))


def init_weights(model, t):
    """train.init_from: our checkpoint, a transformers GPT-2 folder or hf:NAME (model/pretrained.py)."""
    if not isinstance(model, GPT):
        raise ValueError("train.init_from loads into our model (model.impl=ours); model.impl=hf starts from our init")
    source = t.init_from if str(t.init_from).startswith("hf:") else to_absolute_path(os.path.expanduser(t.init_from))
    return load_into(model, source, t.init_positions)


def compiled(model, t, on_cuda):
    """The model's forward under torch.compile when train.compile says so (auto: on CUDA,
    where it is the faster path: benchmarks/results/h100/train-speed), else the model itself."""
    use = on_cuda if t.compile == "auto" else bool(t.compile)
    if not use:
        return model, "eager"
    mode = None if t.compile_mode == "default" else t.compile_mode
    return torch.compile(model, mode=mode), f"torch.compile ({t.compile_mode})"


def train_step(fwd, model, optimizer, batches, accum, grad_clip, autocast):
    """One optimizer step over `accum` micro-batches; returns (mean loss, grad norm or None) as
    device tensors (reading them is left to the caller: a read waits for the GPU)."""
    loss_sum = 0.0
    for _ in range(accum):
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
    gradients; other optimizers rescale in place first (clip_grad_norm_)."""
    if not max_norm:
        optimizer.step()
        return None
    if not optimizer.defaults.get("fused"):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return norm
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # clip_grad_norm_'s coefficient, inverted
    optimizer.step()
    del optimizer.grad_scale
    return norm


def batch_shape(cfg):
    """(sequences per micro-batch, micro-batches per step) from the token budgets."""
    t = cfg.train
    if t.micro_batch_tokens % cfg.context or t.batch_tokens % t.micro_batch_tokens:
        raise ValueError(f"train.micro_batch_tokens ({t.micro_batch_tokens}) must be a multiple of context "
                         f"({cfg.context}) and divide train.batch_tokens ({t.batch_tokens})")
    return t.micro_batch_tokens // cfg.context, t.batch_tokens // t.micro_batch_tokens


def lr_schedule(optimizer, t):
    """Linear warmup, then cosine decay to min_lr at max_steps."""
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, t.max_steps - t.warmup_steps), eta_min=t.min_lr)
    if t.warmup_steps == 0:
        return decay
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / t.warmup_steps, total_iters=t.warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[t.warmup_steps])


class Logger:
    """The same metrics to wandb and to metrics.jsonl."""

    def __init__(self, cfg, out_dir, run_id):
        import wandb
        mode = cfg.wandb.mode
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb.api.api_key else "offline")
        self.wandb = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
                                name=cfg.wandb.name, tags=list(cfg.wandb.tags), mode=mode, dir=str(out_dir),
                                config=OmegaConf.to_container(cfg, resolve=True), id=run_id, resume="allow")
        # Runs of different contexts and speeds line up on tokens seen and on training time.
        self.wandb.define_metric("tokens_seen")
        self.wandb.define_metric("train_time_s")
        for key in ("train/*", "val/*", "tokens_per_s", "mfu", "peak_mem_gb", "lr", "grad_norm", "step_ms"):
            self.wandb.define_metric(key, step_metric="tokens_seen")
        self.wandb.define_metric("val/ppl", step_metric="tokens_seen", summary="min")
        self.wandb.define_metric("peak_mem_gb", step_metric="tokens_seen", summary="max")
        self.file = open(out_dir / "metrics.jsonl", "a")
        self.rates = []

    def log(self, metrics, step):
        self.wandb.log(metrics, step=step)
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if "tokens_per_s" in metrics:
            self.rates.append(metrics["tokens_per_s"])

    def close(self):
        if len(self.rates) > 1:  # the first interval holds compilation and autotuning
            self.wandb.summary["tokens_per_s_median"] = statistics.median(self.rates[1:])
        self.file.close()
        self.wandb.finish()


def save_checkpoint(path, **state):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a broken checkpoint


@torch.no_grad()
def evaluate(model, data, micro_batch, context, device, autocast, max_tokens, by_position=False):
    """Mean validation loss and perplexity; with by_position also the mean loss at each position
    of the window (from the logits: evidence of whether a longer context is used)."""
    model.eval()
    total, count, per_position = 0.0, 0, torch.zeros(context, dtype=torch.float64, device=device)
    for x, y in eval_batches(data, micro_batch, context, device, max_tokens):
        with autocast:
            out = model(x) if by_position else model(x, y)  # logits, or the loss from the fused path
        loss = out
        if by_position:
            losses = torch.nn.functional.cross_entropy(out.float().transpose(1, 2), y, reduction="none")
            per_position += losses.sum(0).double()
            loss = losses.mean()
        total += loss.item() * y.numel()
        count += y.numel()
    model.train()
    loss = total / count
    metrics = {"val/loss": loss, "val/ppl": math.exp(loss)}
    if by_position:
        metrics["val/loss_by_position"] = (per_position * context / count).tolist()
    return metrics


def train(cfg: DictConfig):
    t = cfg.train
    if t.device == "auto":  # resolved into the saved config, so that readers see what ran
        t.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = t.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    out_dir = Path(to_absolute_path(t.out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    micro_batch, accum = batch_shape(cfg)
    # The resolved config beside metrics.jsonl: what benchmarks/compare_runs.py reads.
    (out_dir / "config.json").write_text(json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=1))
    torch.manual_seed(t.seed)

    data_cfg = cfg.data.copy()  # relative paths are relative to where train.py was started
    data_cfg.cache_dir = to_absolute_path(os.path.expanduser(data_cfg.cache_dir))
    if data_cfg.get("root"):
        data_cfg.root = to_absolute_path(os.path.expanduser(data_cfg.root))
    paths = prepare(data_cfg)
    train_data, val_data = tokens(paths["train"]), tokens(paths["val"])
    check_length(train_data, cfg.context, "train")
    check_length(val_data, cfg.context, "val")

    model = build_model(cfg)
    if t.init_from and not t.resume:  # weights only: optimizer, schedule and step start fresh
        print(init_weights(model, t))
    model.to(device)
    optimizer = model.optimizer(t.lr, t.weight_decay, t.betas, "cuda" if device.startswith("cuda") else "cpu")
    scheduler = lr_schedule(optimizer, t)
    batch_gen = torch.Generator().manual_seed(t.seed)
    step, run_id, train_time = 0, None, 0.0
    ckpt_path = out_dir / CKPT
    if t.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"train.resume=true but there is no checkpoint at {ckpt_path}")
        # RNG states must stay CPU tensors; the state dicts copy to their parameters' device.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        batch_gen.set_state(ckpt["batch_rng"])
        torch.set_rng_state(ckpt["cpu_rng"])
        if ckpt.get("cuda_rng") is not None and device.startswith("cuda"):
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        step, run_id, train_time = ckpt["step"], ckpt["wandb_id"], ckpt.get("train_time_s", 0.0)
        print(f"resumed from {ckpt_path} at step {step}")

    on_cuda = device.startswith("cuda")
    dtype = getattr(torch, t.dtype)
    autocast = torch.autocast("cuda", dtype=dtype) if on_cuda and dtype != torch.float32 else nullcontext()
    fwd, how = compiled(model, t, on_cuda)
    batches = TrainBatches(train_data, micro_batch, cfg.context, batch_gen, device, prefetch=t.prefetch)
    peak = peak_flops(torch.cuda.get_device_name()) if on_cuda else None
    flops_per_token = model.flops_per_token(cfg.context)
    logger = Logger(cfg, out_dir, run_id)
    run_id = logger.wandb.id
    mc = model.cfg
    loss_path = (f"cross-entropy {mc.cross_entropy}{' (fused on CUDA)' if mc.cross_entropy == 'auto' else ''}, "
                 f"vocabulary padded to {mc.padded_vocab}") if isinstance(model, GPT) else "fp32 cross-entropy"
    print(f"{model.num_params():,} parameters ({type(model).__name__}) | {cfg.attention.name} attention | "
          f"context {cfg.context} | {micro_batch} x {cfg.context} tokens x {accum} micro-batches per step | {how} | "
          f"{loss_path} | {t.dtype} | "
          f"{'prefetched' if t.prefetch else 'synchronous'} batches | run dir {out_dir}")

    def checkpoint():
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, batch_rng=batches.rng_state(),
                        cpu_rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state() if on_cuda else None,
                        config=OmegaConf.to_container(cfg, resolve=True), wandb_id=run_id, train_time_s=train_time)

    model.train()
    stop_at = t.max_steps if not t.steps_per_run else min(t.max_steps, step + t.steps_per_run)
    interval_start, interval_steps = time.perf_counter(), 0
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    while step < stop_at:
        step_start = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm = train_step(fwd, model, optimizer, batches, accum, t.grad_clip, autocast)
        scheduler.step()
        step += 1
        interval_steps += 1

        if step % t.log_every == 0 or step == t.max_steps:
            loss = loss.item()  # syncs the device: the interval's time is real
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
            if on_cuda:
                metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            logger.log(metrics, step)
            print(f"step {step:6d} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
                  + (f" | mfu {metrics['mfu']:.1%}" if peak else "")
                  + (f" | mem {metrics['peak_mem_gb']:.2f} GB" if on_cuda else ""), flush=True)
            interval_start, interval_steps = time.perf_counter(), 0
        if step % t.eval_every == 0 or step == t.max_steps:
            metrics = evaluate(model, val_data, micro_batch, cfg.context, device, autocast, t.eval_tokens,
                               by_position=step == t.max_steps)
            by_position = metrics.pop("val/loss_by_position", None)
            if by_position:  # a list: into its own file, not a wandb scalar
                (out_dir / "loss_by_position.json").write_text(json.dumps({"step": step, "loss": by_position}))
            logger.log({**metrics, "tokens_seen": step * t.batch_tokens, "train_time_s": train_time}, step)
            print(f"step {step:6d} | val loss {metrics['val/loss']:.4f} | val ppl {metrics['val/ppl']:.2f}", flush=True)
            interval_start, interval_steps = time.perf_counter(), 0  # eval time is not throughput
        if step % t.ckpt_every == 0 or step == stop_at:
            checkpoint()
    batches.close()
    logger.close()
    return model


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    train(cfg)


if __name__ == "__main__":
    main()
