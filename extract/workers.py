"""Worker processes that end with their parent: a killed `extract` leaves no worker running."""
from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor


def die_with_parent() -> None:
    """Ask Linux to send this process SIGKILL when its parent dies (PR_SET_PDEATHSIG); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers end with this process."""
    return ProcessPoolExecutor(workers, initializer=die_with_parent)
