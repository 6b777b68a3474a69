"""What a run shows while it trains: on a terminal a tqdm bar (step / total, elapsed, ETA, with
loss and tokens/s beside it); otherwise (a log file, a batch job) one plain line every
train.log_every steps with the same facts. Rank 0 only."""

import sys
import time
from datetime import timedelta


def clock(seconds):
    return str(timedelta(seconds=int(seconds)))


class Progress:
    def __init__(self, step, total, enabled=True, tty=None):
        self.enabled, self.total = enabled, total
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.first, self.start = step, time.perf_counter()
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def report(self, step, fields):
        """fields: the interval's figures as short strings ({'loss': '3.21', ...})."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(f"{k} {v}" for k, v in fields.items()), refresh=True)
            return
        elapsed = time.perf_counter() - self.start
        done = step - self.first
        eta = elapsed / done * (self.total - step) if done else 0.0
        print(f"step {step}/{self.total} | " + " | ".join(f"{k} {v}" for k, v in fields.items())
              + f" | elapsed {clock(elapsed)} | eta {clock(eta)}", flush=True)

    def say(self, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
