"""The Jupyter kernels :mod:`studylib.workbook.run` executes notebooks in: their environment and their exit.

:func:`kernel_manager_with` makes the kernel manager class papermill starts each notebook's kernel with: the
kernel's environment and command-line arguments are given to it, not set in ``os.environ`` (notebooks run in
parallel threads, each with its own record file).

:class:`KernelReaper`: a kernel whose notebook has finished is told to shut down as jupyter_client always does
(``shutdown_request`` on its control channel, after an interrupt), but the wait for its process to exit -- the
kernel's own clean-up and interpreter shutdown, 0.5-0.9 s per demo notebook, measured -- happens in a background
thread, so the runner renders the report and starts the next notebook meanwhile.  The thread waits as long as
jupyter_client would (half the kernel manager's ``shutdown_wait_time``: 2.5 s by default), then kills the
kernel's process group, and reaps it; :meth:`KernelReaper.close` (end of :func:`studylib.workbook.run.run`) waits for every
kernel handed to it, so no kernel outlives the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading


class KernelReaper:
    """Background waits for kernels that were asked to shut down (see the module docstring).

    Use as a context manager, or call :meth:`close`; :meth:`reap` hands one kernel process over.
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def reap(self, proc: subprocess.Popen, pgid: int | None, wait_s: float) -> None:
        """Wait for ``proc`` (a kernel already asked to shut down) in a background thread: up to ``wait_s``
        seconds, then SIGKILL to its process group ``pgid`` (else to the process), then reap it."""
        th = threading.Thread(target=_wait_or_kill, args=(proc, pgid, wait_s), name=f"studylib-kernel-exit-{proc.pid}")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(th)
        th.start()

    def close(self) -> None:
        """Wait until every kernel handed over has exited (each wait is bounded by its ``wait_s`` and a kill)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for th in threads:
            th.join()

    def __enter__(self) -> KernelReaper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_or_kill(proc: subprocess.Popen, pgid: int | None, wait_s: float) -> None:
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:
            proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def kernel_manager_with(env_overrides: dict[str, str], arguments: list[str] = (), reaper: KernelReaper | None = None):
    """A Jupyter kernel manager class whose kernels start with ``os.environ`` updated by ``env_overrides`` and
    with the extra command-line ``arguments``; with a ``reaper``, a kernel told to shut down is waited for by it
    (in the background) instead of by the caller."""
    from jupyter_client.manager import AsyncKernelManager

    extra, args = dict(env_overrides), list(arguments)

    class _KernelManagerWithEnv(AsyncKernelManager):
        async def start_kernel(self, **kw):
            env = dict(kw.pop("env", None) or os.environ)
            env.update(extra)
            kw["extra_arguments"] = list(kw.get("extra_arguments") or []) + args
            return await super().start_kernel(env=env, **kw)

        async def _async_finish_shutdown(self, waittime=None, pollinterval=0.1, restart=False):
            # called by shutdown_kernel(now=False) right after the shutdown request was sent
            prov = self.provisioner
            proc = getattr(prov, "process", None)
            if reaper is None or restart or not isinstance(proc, subprocess.Popen):
                return await super()._async_finish_shutdown(waittime, pollinterval, restart)
            wait_s = max(self.shutdown_wait_time, 0) if waittime is None else waittime
            # jupyter_client waits half of it, then kills the process group
            reaper.reap(proc, getattr(prov, "pgid", None), prov.get_shutdown_wait_time(recommended=wait_s) / 2)
            prov.process = None  # the reaper owns the process now (as after jupyter_client's own wait)

    return _KernelManagerWithEnv
