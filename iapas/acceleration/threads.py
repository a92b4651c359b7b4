"""How many CPU threads torch uses: set once by the CLI (`--threads`, config `threads`), never on import."""
from __future__ import annotations

import os

import torch

AUTO_THREADS = 0  # the config value meaning: the CPUs this process may run on, unless OMP_NUM_THREADS says


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; a container's cpuset counts, the host's other cores not)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def wanted_threads(threads: int) -> int | None:
    """The thread count to set for a `threads` setting, or None to leave torch's as it is (OMP_NUM_THREADS set)."""
    if threads > 0:
        return threads
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None  # the user chose; torch already read it
    return usable_cpus()


def configure_threads(threads: int = AUTO_THREADS) -> int:
    """Set torch's intra-op thread count for `threads` (0: auto); returns the count in use."""
    count = wanted_threads(threads)
    if count is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return torch.get_num_threads()
