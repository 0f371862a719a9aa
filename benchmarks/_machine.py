"""What a benchmark's child process cost, and what the rest of the machine did meanwhile (shared by the
benchmarks that time whole commands in fresh processes)."""

from __future__ import annotations

import os
import resource
import time


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class ChildRun:
    """``with ChildRun() as m: subprocess.run(...)``: ``m.wall_s``; ``m.cpu_s``, the CPU seconds of the child
    processes reaped meanwhile (the child and every process it started and reaped: workers, kernels, browsers);
    ``m.other_cores_busy``, the cores everything else on the machine kept busy (None without /proc/stat)."""

    def __enter__(self) -> ChildRun:
        self._cpu0, self._busy0, self._t0 = _children_cpu_s(), machine_busy_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        busy1 = machine_busy_s()
        self.cpu_s = _children_cpu_s() - self._cpu0
        self.other_cores_busy = (max(0.0, (busy1 - self._busy0 - self.cpu_s) / self.wall_s)
                                 if self._busy0 is not None and busy1 is not None else None)
