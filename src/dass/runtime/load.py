"""How busy this machine's cores are with other processes: benchmarks say so when their figures are suspect."""

from __future__ import annotations

import os
import time


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_jiffies() -> int:
    """CPU time of this process and its finished children, in jiffies."""
    t = os.times()
    return int((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


def other_load(seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU used by *other* processes over the next ``seconds`` (0.0: the machine is ours)."""
    first, own = _busy_jiffies(), _own_jiffies()
    if first is None:
        return None
    time.sleep(seconds)
    second, own_after = _busy_jiffies(), _own_jiffies()
    assert second is not None
    elapsed = (second[1] - first[1]) / max(os.cpu_count() or 1, 1)   # jiffies per core in the window
    if elapsed <= 0:
        return 0.0
    return max(0.0, ((second[0] - first[0]) - (own_after - own)) / elapsed)


def load_warning(seconds: float = 0.5, threshold: float = 0.25) -> str | None:
    """A one-line warning when other processes use more than ``threshold`` cores, else None."""
    load = other_load(seconds)
    if load is None or load <= threshold:
        return None
    return (f"warning: other processes are using {load:.1f} of {os.cpu_count()} cores; timings measured now are "
            "not trustworthy (run benchmarks on an idle machine)")


def warn_if_busy(seconds: float = 1.0) -> None:
    """Print :func:`load_warning`'s line, if any (benchmarks call this before and after measuring)."""
    warning = load_warning(seconds)
    if warning:
        print(warning, flush=True)
