"""Peak resident memory of a benchmark process and its descendants (distributed workers), sampled in a thread.

Shared by ``benchmarks/scaling.py`` and ``benchmarks/end_to_end.py``; imports nothing of studylib, so a timed
child process that uses it loads no more than psutil.
"""

from __future__ import annotations

import threading
import time

import psutil


class TreeRSS:
    """Peak resident memory of this process and all its descendants, sampled in a thread.

    The list of descendants is refreshed every ``relist_s`` seconds, not at every sample: finding them walks
    all of ``/proc`` (~1 ms of the timed process's CPU, under its GIL), reading one process's RSS ~20 us.
    Distributed workers live for the whole run, so a sample every ``dt`` sees them all.
    """

    def __init__(self, dt: float = 0.02, relist_s: float = 0.5):
        self.dt = dt
        self.relist_s = relist_s
        self.peak = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._kids: list = []
        self._listed = -1e9

    def _sample(self):
        total = own = 0
        try:
            now = time.monotonic()
            if now - self._listed >= self.relist_s:
                self._kids = self._proc.children(recursive=True)
                self._listed = now
            own = self._proc.memory_info().rss
            total = own
            for c in self._kids:
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        self.peak = max(self.peak, total)
        self.peak_self = max(self.peak_self, own)
        return total

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.dt)

    def __enter__(self):
        self.start = self._sample()
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._listed = -1e9
        self._sample()
