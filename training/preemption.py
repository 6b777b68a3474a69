"""Stopping a run cleanly: SIGTERM (what schedulers, and torchrun passing theirs on, send before
a kill), SIGUSR1 (what SLURM sends ahead of the time limit, with --signal=USR1@SECONDS) and
SIGINT (Ctrl-C) make the run finish its step, write a checkpoint and exit 0;
train.resume=true (or auto) continues it. A second Ctrl-C exits at once, without one.

The handler only records the signal; the loop asks between steps, all ranks together, so a
signal that reaches any rank stops every rank after the same step.
"""

import signal

from training import distributed

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption:
    def __init__(self, signals=SIGNALS):
        self.received = None
        self.previous = {s: signal.signal(s, self._record) for s in signals}

    def _record(self, signum, frame):
        if signum == signal.SIGINT and self.received == "SIGINT":  # the second Ctrl-C: out now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to exit at once)", flush=True)
        self.received = signal.Signals(signum).name

    def requested(self, d):
        """The signal's name once any rank has received one, else None (a collective)."""
        if not distributed.any_rank(self.received is not None, d):
            return None
        return self.received or "a signal to another rank"

    def close(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
