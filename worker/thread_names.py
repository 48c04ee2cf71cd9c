"""An OS-level name for the thread that runs forward passes, so /proc (bench.run) and top -H can
tell the model's CPU from the rest of the worker's (Celery, Redis I/O, tokenisation).

OpenMP threads inherit the name of the thread that first runs a parallel region, so naming the
batcher thread before its first forward pass names torch's compute threads too. Linux only; a
diagnostic aid that does nothing elsewhere.
"""

import ctypes

FORWARD_THREAD_NAME = "forward"
PR_SET_NAME = 15


def name_this_thread(name: str) -> None:
    """Name the calling thread (at most 15 bytes)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
