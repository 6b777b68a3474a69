"""Metrics to wandb and to metrics.jsonl in the run directory, the same rows to both.

wandb runs of different contexts and speeds line up on tokens seen and on training time
(define_metric), and keep the summaries a comparison needs: min val ppl, median tokens/s
(the first interval, which holds compilation and autotuning, left out), peak memory.
"""

import json
import os
import statistics
import sys
import time

from omegaconf import OmegaConf


RETRIES = 5  # 2 s apart, before a resumed run gives up its wandb run id


class Logger:
    """The same metrics to wandb and to metrics.jsonl; on rank 0 only."""

    def __init__(self, cfg, out_dir, run_id, enabled=True):
        self.enabled, self.run_id = enabled, run_id
        if not enabled:
            return
        self.file = open(out_dir / "metrics.jsonl", "a")
        self.rates, self.wandb = [], None
        mode = cfg.wandb.mode
        if mode == "disabled":  # metrics.jsonl only; wandb is not even imported
            return
        import wandb
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb.login(prompt=False, verify=False) else "offline")
        init = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group, name=cfg.wandb.name,
                    tags=list(cfg.wandb.tags), mode=mode, dir=str(out_dir), config=OmegaConf.to_container(cfg, resolve=True))
        for attempt in range(RETRIES + 1):
            try:
                self.wandb = wandb.init(**init, id=run_id, resume="allow")
                break
            except Exception as e:
                # A run resumed right after its process was killed (kill -9): wandb's service
                # process of the dead run may still hold the run id. Wait a little, then log to a
                # new wandb run (metrics.jsonl continues either way).
                if "in use" not in str(e) or run_id is None:
                    raise
                if attempt == RETRIES:
                    self.wandb = wandb.init(**init)
                    print(f"wandb: run id {run_id} is still held (its process was killed?); logging to a new wandb "
                          f"run {self.wandb.id}", file=sys.stderr, flush=True)
                    break
                time.sleep(2)
        # Runs of different contexts and speeds line up on tokens seen and on training time.
        self.wandb.define_metric("tokens_seen")
        self.wandb.define_metric("train_time_s")
        for key in ("train/*", "val/*", "tokens_per_s", "mfu", "peak_mem_gb", "lr", "grad_norm", "step_ms"):
            self.wandb.define_metric(key, step_metric="tokens_seen")
        self.wandb.define_metric("val/ppl", step_metric="tokens_seen", summary="min")
        self.wandb.define_metric("peak_mem_gb", step_metric="tokens_seen", summary="max")
        self.run_id = self.wandb.id

    def log(self, metrics, step):
        if not self.enabled:
            return
        if self.wandb:
            self.wandb.log(metrics, step=step)
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if "tokens_per_s" in metrics:
            self.rates.append(metrics["tokens_per_s"])

    def close(self):
        if not self.enabled:
            return
        self.file.close()
        if self.wandb:
            if len(self.rates) > 1:  # the first interval holds compilation and autotuning
                self.wandb.summary["tokens_per_s_median"] = statistics.median(self.rates[1:])
            self.wandb.finish()
