"""The machine as this process finds it: the cores it may use, how many of them are free, the
torch threads that fit, and the memory it can still give.

Threads that outnumber the free cores make a small net's training several times slower, not a bit
(OpenMP's threads wait on each other at every layer while one of them is descheduled; measured in
docs/benchmarks.md: 60.5 s an epoch with 2 threads beside another 2-core job, 14.4 s with 1). So the
thread count follows what is free now, and is looked at again between trials.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOOK = 0.25  # seconds over which the idle share of the cores is measured


@dataclass(frozen=True)
class Threads:
    """The torch threads chosen, and why (shown in the banner)."""

    n: int
    why: str


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_quota() -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, or v1 `cfs_quota_us / cfs_period_us`), or None if unlimited."""
    for path, parse in ((Path("/sys/fs/cgroup/cpu.max"), lambda t: t.split()),
                        (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), lambda t: [t.strip(), Path(
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()])):
        try:
            quota, period = parse(path.read_text())
            if quota not in ("max", "-1") and int(period) > 0:
                return int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def busy_cores(look: float = LOOK) -> float:
    """How many cores other processes kept busy over the last `look` seconds (this one is idle meanwhile),
    from /proc/stat; 0 where that cannot be read."""
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(look)
    second = _cpu_times()
    if second is None:
        return 0.0
    busy, total = second[0] - first[0], second[1] - first[1]
    n_cpus = os.cpu_count() or 1
    return n_cpus * busy / total if total > 0 else 0.0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def pick_threads(n_workers: int = 1, requested: int | None = None) -> Threads:
    """torch's intra-op threads for each of `n_workers` processes of this run: `requested` (--threads) or
    OMP_NUM_THREADS when given, else the usable cores that other processes leave free, at most an even
    share of them per worker, at least one. A worker asking between its trials counts its siblings
    among the other processes, so the shares still add up."""
    if requested:
        return Threads(requested, "--threads")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isascii() and env.isdigit() and int(env) >= 1:
        return Threads(int(env), "OMP_NUM_THREADS")
    cores = usable_cores()
    others = min(busy_cores(), cores)
    n = max(1, min(cores // n_workers, round(cores - others)))
    why = f"{cores} cores" + (f", {others:.1f} busy with other work" if others >= 0.5 else " free")
    return Threads(n, why)


ASSUMED_MEMORY = 4 << 30  # what nas plans with where a machine does not say how much memory it has: a modest machine's
UNKNOWN_MEMORY = "this machine does not say how much memory it has, so nas assumes 4 GiB"


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable on Linux, else its physical memory), or None
    where it does not say: a caller then plans with ASSUMED_MEMORY and says so (UNKNOWN_MEMORY), since a
    guard fed a made-up large figure would let everything pass."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or a name this system lacks
        return None
