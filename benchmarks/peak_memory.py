"""Peak memory of a process tree: the largest sum of proportional set sizes (PSS: resident memory, pages shared
between processes counted once) over a process and its descendants (preprocessing, export and generation workers),
sampled every 0.1 s from /proc (Linux)."""
import os
import threading
import time
from typing import Optional


def pss_gb(pid: int) -> float:
    """Proportional set size: pages shared between the processes (torch's libraries, forked workers) counted once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024 ** 2
    except (OSError, StopIteration):
        return 0.0


def descendants(pid: int) -> list:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
                found += children
                todo += children
        except OSError:
            pass
    return found


class PeakMemory:
    """Largest sum of PSS of a process (default: this one) and its descendants, sampled in a thread."""

    def __init__(self, pid: Optional[int] = None, interval: float = 0.1):
        self.pid, self.interval, self.peak, self._stop = pid or os.getpid(), interval, 0.0, threading.Event()
        self.peak_root = 0.0      # the process itself, without its descendants
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            root = pss_gb(self.pid)
            self.peak_root = max(self.peak_root, root)
            self.peak = max(self.peak, root + sum(pss_gb(p) for p in descendants(self.pid)))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
