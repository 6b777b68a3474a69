"""Train GPT-2 with a chosen attention backend: the Hydra entry point (the loop is training/loop.py).

    python train.py attention=flash context=4096
    python train.py model=gpt2-tiny data=owt-sample train.device=cpu train.max_steps=20
    python train.py -m attention=naive,sdpa,flash        # a sweep, one run each
    python train.py experiment=finetune train.init_from=runs/RUN data=local data.train_files=[my.jsonl]
    torchrun --nproc_per_node=8 train.py [train.parallel=fsdp] ...      # data-parallel, same global batch

Logs loss, perplexity, tokens/s, MFU and peak memory to wandb and to metrics.jsonl in the run
directory; checkpoints there too (train.resume=true continues from the newest good one;
SIGTERM, SIGUSR1 or Ctrl-C end a run after its step with a checkpoint). Bad input (a config
key, a data file, a run directory) is one line on stderr and exit status 2;
HYDRA_FULL_ERROR=1 shows the traceback instead.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from data.prepare import DataError
from training.config import UserError
from training.loop import train


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        train(cfg)
    except (UserError, DataError, FileNotFoundError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C
        print("interrupted: exited without a checkpoint", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
