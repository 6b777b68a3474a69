"""The run's configuration checked before anything is written: one line naming the key and what
it takes, for every key a user sets; and what a resumed run may change.

UserError is the one exception train.py turns into a single line on stderr (exit 2); the
full traceback comes with HYDRA_FULL_ERROR=1.
"""

from omegaconf import OmegaConf

from attention import BACKENDS, options_of


class UserError(ValueError):
    """Bad input (configuration, data, run directory): its message is all the user needs."""


# key -> allowed values (None stands for null)
CHOICES = {
    "model.impl": ("ours", "hf"),
    "model.cross_entropy": ("auto", "fused", "plain", "upcast", "liger"),
    "model.qkv_packed": (True, False),
    "model.documents": (True, False),
    "model.block_sparse": (None, "butterfly"),
    "attention.name": tuple(BACKENDS),
    "train.device": ("auto", "cuda", "cpu"),
    "train.dtype": ("bfloat16", "float16", "float32"),
    "train.compile": ("auto", True, False),
    "train.compile_mode": ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"),
    "train.prefetch": (True, False),
    "train.resume": (True, False, "auto"),
    "train.parallel": ("ddp", "fsdp"),
    "train.init_positions": ("copy", "interpolate"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
    "data.source": ("local", "hf"),
}
POSITIVE = ("context", "model.n_layer", "model.n_head", "model.n_embd", "model.vocab_multiple", "model.xent_chunk",
            "train.batch_tokens", "train.micro_batch_tokens", "train.max_steps", "train.log_every", "train.eval_every",
            "train.ckpt_every", "train.keep_checkpoints", "model.sparse_block")
NON_NEGATIVE = ("train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay", "train.grad_clip",
                "model.dropout", "model.attn_dropout", "train.ddp_bucket_mb")
OPTIONAL_POSITIVE = ("train.steps_per_run", "train.eval_tokens", "data.max_docs", "model.window")
# Values that shape what a run learns: a resumed run keeps its checkpoint's unless told
# (train.allow_changes); context and architecture never change on resume (use train.init_from).
RESUME_KEYS = ("train.max_steps", "train.lr", "train.min_lr", "train.warmup_steps", "train.batch_tokens",
               "train.weight_decay", "train.betas", "train.grad_clip", "train.seed")
FIXED_ON_RESUME = ("context", "model.n_layer", "model.n_head", "model.n_embd", "model.vocab_multiple", "model.impl",
                   "model.window", "model.documents", "model.block_sparse", "model.sparse_block", "data.name")
# what a key means in a checkpoint written before the key existed
ABSENT_MEANS = {"model.window": None, "model.documents": False, "model.block_sparse": None, "model.sparse_block": 128}


def _get(cfg, key):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _show(values):
    return " | ".join("null" if a is None else str(a).lower() if isinstance(a, bool) else str(a) for a in values)


def _allowed(v, allowed):
    """v among the allowed values, a bool only where a bool is allowed (1 is not true here)."""
    return any(v == a and isinstance(v, bool) == isinstance(a, bool) for a in allowed)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(cfg):
    """Raises UserError naming the first bad key; returns nothing."""
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception:  # an interpolation only Hydra's runtime resolves (outside a Hydra run)
        missing = []
    # `requires`: keys an experiment needs the user to set (`???` would not do: merged over a
    # default, OmegaConf keeps the default)
    missing += [k for k in (_get(cfg, "requires") or []) if _get(cfg, k) in (None, "")]
    if missing:
        raise UserError(f"{missing[0]} is required here and was not given (e.g. {missing[0]}=...)")
    for key, allowed in CHOICES.items():
        v = _get(cfg, key)
        if not _allowed(v, allowed):
            raise UserError(f"{key}={v!r} is not one of: {_show(allowed)}")
    takes = options_of(cfg.attention.name)
    for key, v in (_get(cfg, "attention.options") or {}).items():
        if key not in takes:
            raise UserError(f"attention.options.{key}: attention={cfg.attention.name} has no such option; "
                            + (f"it takes: {', '.join(takes)}" if takes else "it takes none"))
        if v is not None and not _allowed(v, takes[key]):  # null: the backend's default
            raise UserError(f"attention.options.{key}={v!r} is not one of: {_show(takes[key])}")
    for key in POSITIVE:
        v = _get(cfg, key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise UserError(f"{key}={v!r}: a positive whole number is needed")
    for key in NON_NEGATIVE:
        v = _get(cfg, key)
        if not (_number(v) and v >= 0):
            raise UserError(f"{key}={v!r}: a number >= 0 is needed")
    for key in OPTIONAL_POSITIVE:
        v = _get(cfg, key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise UserError(f"{key}={v!r}: a positive whole number or null is needed")
    for key, what in (("model.window", "sliding-window attention"), ("model.documents", "document masking")):
        if _get(cfg, key) not in (None, False) and (cfg.model.impl != "ours" or cfg.attention.name == "flash1"):
            raise UserError(f"{key} ({what}) needs model.impl=ours and attention=naive | sdpa | flash; "
                            f"this run has model.impl={cfg.model.impl}, attention={cfg.attention.name}")
    if _get(cfg, "model.block_sparse") is not None:
        if cfg.model.impl != "ours" or cfg.attention.name not in ("flash", "naive"):
            raise UserError(f"model.block_sparse needs model.impl=ours and attention=flash | naive; this run has "
                            f"model.impl={cfg.model.impl}, attention={cfg.attention.name}")
        if _get(cfg, "model.window") is not None or _get(cfg, "model.documents"):
            raise UserError("model.block_sparse does not combine with model.window or model.documents "
                            "(a block mask takes no other mask)")
    t = cfg.train
    if t.min_lr > t.lr:
        raise UserError(f"train.min_lr={t.min_lr} is above train.lr={t.lr}")
    if cfg.model.n_embd % cfg.model.n_head:
        raise UserError(f"model.n_embd={cfg.model.n_embd} is not a multiple of model.n_head={cfg.model.n_head}")
    betas = _get(cfg, "train.betas")
    if not (OmegaConf.is_list(betas) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
        raise UserError(f"train.betas={betas!r}: two numbers in [0, 1) are needed, e.g. [0.9,0.95]")
    for key in list(_get(cfg, "train.allow_changes") or []):
        if f"train.{key}" not in RESUME_KEYS:
            raise UserError(f"train.allow_changes names {key!r}; it takes: "
                            f"{', '.join(k.removeprefix('train.') for k in RESUME_KEYS)}")


def resume_changes(saved, cfg):
    """[(key, saved value, new value)] of the values that shape learning and differ from the
    checkpoint's config (saved: a plain dict). Raises UserError for those that cannot change,
    and for a change not in train.allow_changes."""
    saved = OmegaConf.create(saved)
    for key in FIXED_ON_RESUME:
        old = _get(saved, key)
        if old is None:
            old = ABSENT_MEANS.get(key)
        if old != _get(cfg, key):
            raise UserError(f"{key} is {old!r} in the checkpoint and {_get(cfg, key)!r} now: a resumed run "
                            "keeps it; to train on from these weights with another value, start a new run with "
                            "train.init_from=<this run dir>")
    allowed = set(_get(cfg, "train.allow_changes") or [])
    changes = []
    for key in RESUME_KEYS:
        old, new = _get(saved, key), _get(cfg, key)
        old, new = (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in (old, new))
        if old == new or old is None:
            continue
        name = key.removeprefix("train.")
        if name not in allowed:
            raise UserError(f"{key} is {old!r} in the checkpoint and {new!r} now: a resumed run keeps what it trained "
                            f"with; pass train.allow_changes=[{name}] to take the new value from the checkpoint's "
                            "step on, or start a new run in another directory")
        changes.append((key, old, new))
    return changes
