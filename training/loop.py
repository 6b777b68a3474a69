"""The training loop: a Trainer built from the config (model, optimizer, batches, one step),
and run(), which drives it with evaluation, logging, checkpoints and signals.

    Trainer(cfg, d, train_data).step()   # one optimizer step: what benchmarks time
    train(cfg)                           # the whole run: what train.py calls

One home each for the distributed setup (distributed.py), checkpoint contents
(checkpoints.py), the run directory (rundir.py), configuration checks (config.py), signals
(preemption.py), evaluation (evaluation.py), metrics (logger.py) and progress (progress.py).
"""

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.distributed.tensor import DTensor

from attention import PACKED
from data.batches import TrainBatches, check_length, tokens
from data.prepare import prepare
from model import GPT, GPTConfig, peak_flops
from training import checkpoints, distributed, rundir
from training.config import UserError, check, resume_changes
from training.evaluation import evaluate
from training.logger import Logger
from training.preemption import Preemption
from training.progress import Progress


def build_model(cfg):
    m = cfg.model
    if m.get("impl", "ours") == "hf":
        from model.hf import HFGPT as impl  # transformers only when asked for
    else:
        impl = GPT
    return impl(GPTConfig(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, context=cfg.context,
                          dropout=m.dropout, attn_dropout=m.attn_dropout, vocab_multiple=m.vocab_multiple,
                          cross_entropy=m.cross_entropy, xent_chunk=m.xent_chunk, qkv_packed=m.qkv_packed,
                          window=m.get("window"), documents=m.get("documents", False),
                          block_sparse=m.get("block_sparse"), sparse_block=m.get("sparse_block", 128),
                          attention=cfg.attention.name,
                          attention_options=OmegaConf.to_container(cfg.attention.options)))


def init_weights(model, t):
    """train.init_from: our checkpoint, a transformers GPT-2 folder or hf:NAME (training/weights.py)."""
    from training.weights import load_into
    if not isinstance(model, GPT):
        raise UserError("train.init_from loads into our model (model.impl=ours); model.impl=hf starts from our init")
    source = t.init_from if str(t.init_from).startswith("hf:") else os.path.abspath(os.path.expanduser(t.init_from))
    return load_into(model, source, t.init_positions)


def compiler(t, on_cuda):
    """(a function putting a model's forward under torch.compile when train.compile says so
    (auto: on CUDA, where it is the faster path), or leaving it as it is; its description)."""
    if not (on_cuda if t.compile == "auto" else bool(t.compile)):
        return (lambda model: model), "eager"
    mode = None if t.compile_mode == "default" else t.compile_mode
    return (lambda model: torch.compile(model, mode=mode)), f"torch.compile ({t.compile_mode})"


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
        raise UserError(f"train.micro_batch_tokens ({t.micro_batch_tokens}) must be a multiple of context "
                        f"({cfg.context}) and divide train.batch_tokens ({t.batch_tokens})"
                        + (f" / {world} ranks" if world > 1 else ""))
    return t.micro_batch_tokens // cfg.context, t.batch_tokens // (t.micro_batch_tokens * world)


def lr_at(step, t):
    """The learning rate of optimizer step `step` (0-based): linear warm-up from lr / warmup_steps
    to lr over warmup_steps, cosine decay to min_lr at max_steps, min_lr after. A function of
    the step and the config alone, so a resumed run (or one allowed a new max_steps) follows it."""
    if step < t.warmup_steps:
        return t.lr * (1 + (t.warmup_steps - 1) * step / t.warmup_steps) / t.warmup_steps
    if step >= t.max_steps:
        return t.min_lr
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(t):
    if t.device == "auto":  # resolved into the saved config, so that readers see what ran
        t.device = "cuda" if torch.cuda.is_available() else "cpu"
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")


class Trainer:
    """The model, optimizer and batches of a config, and one optimizer step (step()).
    `d`: distributed.setup's (a plain Dist for one process)."""

    def __init__(self, cfg, d, train_data, compile=None, init=True):
        t = self.t = cfg.train
        self.cfg, self.d, self.device = cfg, d, d.device
        self.on_cuda = self.device.startswith("cuda")
        self.micro_batch, self.accum = batch_shape(cfg, d.world)
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        self.model = build_model(cfg)
        self.init_account = init_weights(self.model, t) if t.init_from and init else None  # weights only
        self.model.to(self.device)
        compile_fn, self.how = compiler(t, self.on_cuda)
        self.fwd, self.sync = distributed.wrap(self.model, d, compile or compile_fn, t.ddp_bucket_mb)
        self.optimizer = self.model.optimizer(t.lr, t.weight_decay, t.betas, "cuda" if self.on_cuda else "cpu")
        self.batch_gen = torch.Generator().manual_seed(t.seed)  # one generator on every rank: data.batches says why
        self.train_data = train_data
        self.batches = None
        self.step_num = 0
        dtype = getattr(torch, t.dtype)
        self.dtype = dtype if self.on_cuda else torch.float32  # the CPU trains in float32
        self.autocast = torch.autocast("cuda", dtype=dtype) if self.on_cuda and dtype != torch.float32 else nullcontext()

    def start_batches(self):
        """The batch stream from the generator's current state (after a resume: the checkpoint's)."""
        self.batches = TrainBatches(self.train_data, self.micro_batch, self.cfg.context, self.batch_gen, self.device,
                                    prefetch=self.t.prefetch, accum=self.accum, rank=self.d.rank, world=self.d.world)

    def step(self):
        """One optimizer step over `accum` micro-batches at lr_at(step_num); returns (mean loss,
        grad norm or None) as device tensors (reading them waits for the GPU)."""
        if self.batches is None:
            self.start_batches()
        lr = lr_at(self.step_num, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for i in range(self.accum):
            if self.sync:
                self.sync(i == self.accum - 1)  # ranks reduce gradients in the last micro-batch only
            x, y = next(self.batches)
            with self.autocast:
                loss = self.fwd(x, y)
            (loss / self.accum).backward()
            loss_sum += loss.detach()
        grad_norm = clip_and_step(self.model, self.optimizer, self.t.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        self.step_num += 1
        return loss_sum / self.accum, grad_norm

    def describe(self):
        """The startup line: what this run actually uses."""
        model, cfg, d = self.model, self.cfg, self.d
        if isinstance(model, GPT):
            mc = model.cfg
            xent = mc.cross_entropy if mc.cross_entropy != "auto" else ("fused" if self.on_cuda else "upcast")
            loss_path = f"cross-entropy {xent}, vocabulary padded to {mc.padded_vocab}"
        else:
            loss_path = "fp32 cross-entropy"
        ranks = f"{d.world} ranks ({d.parallel}) x " if d.world > 1 else ""
        packed = " on packed QKV" if isinstance(model, GPT) and model.cfg.qkv_packed and cfg.attention.name in PACKED else ""
        precision = f"{self.t.dtype} autocast" if self.on_cuda and self.dtype != torch.float32 else "float32"
        masks = ""
        if isinstance(model, GPT):  # beside causal: what each token may see
            mc = model.cfg
            masks = "".join([f", window {mc.window}" if mc.window else "", ", document masking" if mc.documents else "",
                             f", block-sparse ({mc.block_sparse}, {mc.sparse_block}-token tiles)" if mc.block_sparse else ""])
        return (f"{model.num_params():,} parameters ({type(model).__name__.removeprefix('FSDP')}) | "
                f"{cfg.attention.name} attention{packed}{masks} | context {cfg.context} | {ranks}{self.micro_batch} x "
                f"{cfg.context} tokens x {self.accum} micro-batches per step | {self.how} | {loss_path} | {precision} "
                f"on {self.device} | {'prefetched' if self.t.prefetch else 'synchronous'} batches")

    def checkpoint(self, out_dir, keep, **extra):
        checkpoints.write(out_dir, self.step_num, self.d, keep, self.model, self.optimizer,
                          batch_rng=self.batches.rng_state(), config=OmegaConf.to_container(self.cfg, resolve=True),
                          **extra)

    def resume(self, out_dir):
        """Loads the newest good checkpoint; returns it (without the model and optimizer states) and its path."""
        ckpt, path = checkpoints.resume(out_dir, self.d, self.model, self.optimizer, self.t.seed)
        self.batch_gen.set_state(ckpt["batch_rng"])
        self.step_num = ckpt["step"]
        for group in self.optimizer.param_groups:  # values train.allow_changes let change
            group["betas"] = tuple(self.t.betas)
            if group["weight_decay"]:
                group["weight_decay"] = self.t.weight_decay
        return ckpt, path


def load_data(cfg, d):
    """(train, val) token memmaps; rank 0 tokenizes the corpus first (cached), the others read its cache."""
    data_cfg = cfg.data.copy()  # relative paths are relative to where train.py was started
    data_cfg.cache_dir = os.path.abspath(os.path.expanduser(data_cfg.cache_dir))
    data_cfg.root = os.path.abspath(os.path.expanduser(data_cfg.get("root") or "."))
    if not d.main:
        distributed.barrier(d)
    paths = prepare(data_cfg)
    if d.main:
        distributed.barrier(d)
    train_data, val_data = tokens(paths["train"]), tokens(paths["val"])
    check_length(train_data, cfg.context, "train")
    check_length(val_data, cfg.context, "val")
    return train_data, val_data


def resuming(t, out_dir):
    """Whether this run continues from a checkpoint: train.resume true | false | auto (if one exists)."""
    found = bool(checkpoints.saved(out_dir))
    if t.resume is True and not found:
        raise UserError(f"train.resume=true but there is no checkpoint (ckpt-*.pt) in {out_dir}")
    return t.resume is True or (t.resume == "auto" and found)


def saved_config(out_dir):
    """The config the run in out_dir was started (or last resumed) with."""
    try:
        return json.loads((Path(out_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def train(cfg):
    """The whole run of a config (train.py's entry): checks first, then the run directory, then training."""
    check(cfg)
    t = cfg.train
    resolve_device(t)
    if t.device == "cpu" and cfg.attention.name in ("flash", "flash1"):  # before any data is prepared
        raise UserError(f"attention={cfg.attention.name} runs our Triton kernels in fp16/bf16 on a CUDA GPU; "
                        "training on the CPU is float32: use attention=sdpa or attention=naive there")
    out_dir = Path(os.path.abspath(t.out_dir))
    resume = resuming(t, out_dir)
    changes = []
    if resume:
        saved = saved_config(out_dir)
        if saved is None:
            raise UserError(f"{out_dir} has checkpoints but no config.json: not a run directory of train.py")
        changes = resume_changes(saved, cfg)
    d = distributed.setup(t.device, t.parallel)
    lock = rundir.claim(out_dir, resume) if d.main else None  # rank 0 writes the run directory
    preemption = Preemption()  # from here on SIGTERM / SIGUSR1 / SIGINT end the run after a step, with a checkpoint
    try:
        return run(cfg, d, preemption, out_dir, resume, changes)
    finally:
        preemption.close()
        if lock:
            lock.close()
        distributed.teardown(d)


def run(cfg, d, preemption, out_dir, resume, changes):
    t = cfg.train
    train_data, val_data = load_data(cfg, d)
    trainer = Trainer(cfg, d, train_data, init=not resume)
    say = (lambda text: print(text, flush=True)) if d.main else (lambda text: None)
    if trainer.init_account and not resume:
        say(trainer.init_account)
    run_id, train_time = None, 0.0
    if resume:
        ckpt, path = trainer.resume(out_dir)
        run_id, train_time = ckpt["wandb_id"], ckpt["train_time_s"]
        say(f"resumed from {path} at step {trainer.step_num}")
        for key, old, new in changes:
            say(f"resume: {key} {old} -> {new} (train.allow_changes); learning rate at step {trainer.step_num}: "
                f"{lr_at(trainer.step_num, OmegaConf.create(saved_train(ckpt))):.3g} -> {lr_at(trainer.step_num, t):.3g}")
        if trainer.step_num >= t.max_steps:
            say(f"{out_dir} already finished: step {trainer.step_num} of train.max_steps={t.max_steps}; nothing to train "
                "(a larger train.max_steps with train.allow_changes=[max_steps] continues it)")
            return trainer.model
    elif d.world > 1:
        torch.manual_seed(t.seed + d.rank)  # dropout masks differ across ranks
    if d.main:  # the resolved config beside metrics.jsonl, and where it ran: what benchmarks/compare_runs.py reads
        env = {"device": torch.cuda.get_device_name() if trainer.on_cuda else "cpu", "world": d.world,
               "torch": torch.__version__}
        (out_dir / "config.json").write_text(json.dumps({**OmegaConf.to_container(cfg, resolve=True), "env": env}, indent=1))
    trainer.start_batches()
    on_cuda = trainer.on_cuda
    peak = peak_flops(torch.cuda.get_device_name()) if on_cuda else None  # None: an unknown GPU, no MFU
    peak = peak * d.world if peak else None  # MFU per GPU: tokens/s is the world's
    flops_per_token = trainer.model.flops_per_token(cfg.context)
    logger = Logger(cfg, out_dir, run_id, enabled=d.main)
    run_id = logger.run_id
    say(f"{trainer.describe()} | run dir {out_dir}")

    step = trainer.step_num
    stop_at = t.max_steps if not t.steps_per_run else min(t.max_steps, step + t.steps_per_run)
    progress = Progress(step, t.max_steps, enabled=d.main)
    interval_start, interval_steps = time.perf_counter(), 0
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.model.train()
    try:
        while step < stop_at:
            step_start = time.perf_counter()
            lr = lr_at(step, t)
            loss, grad_norm = trainer.step()
            step = trainer.step_num
            interval_steps += 1
            progress.advance()
            if step % t.log_every == 0 or step == t.max_steps:
                loss = distributed.mean(loss, d).item()  # syncs the device: the interval's time is real
                now = time.perf_counter()
                train_time += now - interval_start
                tokens_per_s = interval_steps * t.batch_tokens / (now - interval_start)
                metrics = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50)), "lr": lr,
                           **({"grad_norm": grad_norm.item()} if grad_norm is not None else {}),
                           "tokens_per_s": tokens_per_s, "step_ms": 1000 * (now - step_start),
                           "tokens_seen": step * t.batch_tokens, "train_time_s": train_time}
                if peak:
                    metrics["mfu"] = flops_per_token * tokens_per_s / peak
                if on_cuda:  # rank 0's
                    metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                logger.log(metrics, step)
                progress.report(step, {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_s:,.0f}",
                                       **({"mfu": f"{metrics['mfu']:.1%}"} if peak else {}),
                                       **({"mem": f"{metrics['peak_mem_gb']:.2f} GB"} if on_cuda else {})})
                interval_start, interval_steps = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.max_steps:
                metrics = evaluate(trainer.model, val_data, trainer.micro_batch, cfg.context, d.device, trainer.autocast,
                                   t.eval_tokens, by_position=step == t.max_steps, d=d)
                by_position = metrics.pop("val/loss_by_position", None)
                if by_position and d.main:  # a list: into its own file, not a wandb scalar
                    (out_dir / "loss_by_position.json").write_text(json.dumps({"step": step, "loss": by_position}))
                logger.log({**metrics, "tokens_seen": step * t.batch_tokens, "train_time_s": train_time}, step)
                progress.say(f"step {step:6d} | val loss {metrics['val/loss']:.4f} | val ppl {metrics['val/ppl']:.2f}")
                interval_start, interval_steps = time.perf_counter(), 0  # eval time is not throughput
            stop = preemption.requested(d)
            if step % t.ckpt_every == 0 or step == stop_at or stop:
                trainer.checkpoint(out_dir, t.keep_checkpoints, wandb_id=run_id, train_time_s=train_time)
            if stop:
                progress.say(f"{stop}: stopped after step {step} with a checkpoint; train.resume=true continues")
                break
    finally:
        progress.close()
        trainer.batches.close()
        logger.close()
    return trainer.model


def saved_train(ckpt):
    return ckpt["config"]["train"]
