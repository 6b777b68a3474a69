"""A run directory belongs to one run.

A new run (not a resume) is refused where a run already lives (its config, metrics or
checkpoints), with one line saying how to continue it or where else to start; a lock
(fcntl.flock on `.lock`, released by the kernel when the process dies, so a kill leaves no
stale lock) keeps two live runs out of one directory. The lock is taken before anything is
written there, and only after the configuration has been checked.
"""

import fcntl
import os
from pathlib import Path

from training import checkpoints
from training.config import UserError

LOCK = ".lock"


def holds_run(run_dir):
    """What in run_dir shows that a run lives there (a short description), or None."""
    run_dir = Path(run_dir)
    found = [name for name in ("config.json", "metrics.jsonl") if (run_dir / name).exists()]
    ckpts = checkpoints.saved(run_dir)
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s), the newest at step {ckpts[-1][0]}")
    return ", ".join(found) or None


class RunDirLock:
    """Held for the run's life by the process that writes the run directory (rank 0)."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.run_dir / LOCK, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"another run is live in {self.run_dir} (pid {holder}); wait for it to end, or start "
                            "this one elsewhere (hydra.run.dir=...)") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def close(self):
        if self.file and not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def claim(run_dir, resume):
    """Locks run_dir for this run; a new run where one lives is refused (UserError)."""
    lock = RunDirLock(run_dir)
    if not resume and (what := holds_run(run_dir)):
        lock.close()
        raise UserError(f"{run_dir} already holds a run ({what}): continue it with train.resume=true, "
                        "or start a new one elsewhere (hydra.run.dir=...)")
    return lock
