"""CPU threads for torch from the cores other processes leave free: shared by training and the `hfdiff` command.

torch's OpenMP threads wait for each other at the end of every operation, so a thread sharing its core with another
busy process stalls all of them (benchmarks/results/cpu_contention.md): a CPU run takes the cores that are free when
it starts, and no more.
"""

from __future__ import annotations

import os

# How long start-up watches the CPUs for other work, and the share of a CPU that marks it busy. Idle CPUs read a few
# per cent (noise, the launcher); one taken by another process reads ~100 %.
LOAD_SAMPLE_SECONDS = 0.3
BUSY_CPU_PERCENT = 50.0


def free_cpu_cores(sample_seconds: float = LOAD_SAMPLE_SECONDS) -> tuple[int, str]:
    """Physical cores (at least 1) this process may use that no other process keeps busy, and how they were counted.

    Only the CPUs of this process's affinity count (taskset, cgroup cpusets). A logical CPU is free when it was less
    than BUSY_CPU_PERCENT busy over `sample_seconds`; free logical CPUs are scaled to physical cores, since two
    hyper-threads of one core are no faster than one thread of it for these convolutions."""
    import psutil

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    busy = psutil.cpu_percent(interval=sample_seconds, percpu=True)
    free = [cpu for cpu in allowed if cpu < len(busy) and busy[cpu] < BUSY_CPU_PERCENT]
    logical = psutil.cpu_count(logical=True) or len(busy) or 1
    physical = psutil.cpu_count(logical=False) or logical
    cores = max(1, len(free) * physical // logical)
    loads = ", ".join(f"cpu{cpu} {busy[cpu]:.0f}%" for cpu in allowed if cpu < len(busy))
    return cores, f"{len(free)} of {len(allowed)} CPUs free over {sample_seconds:g} s ({loads})"


def free_core_threads(limit: int, processes: int = 1) -> tuple[int, str]:
    """Threads per process (at least 1, at most `limit`) for `processes` processes sharing this machine's free cores
    (`free_cpu_cores`), and the load that decided it. The count is fixed once, as OpenMP expects: load that starts
    later is not followed."""
    cores, load = free_cpu_cores()
    return max(1, min(limit, cores // max(1, processes))), load


def use_free_cores() -> str:
    """Set torch's thread count for this process from the free cores, at most its current count (its default,
    OMP_NUM_THREADS, or the caller's set_num_threads); returns why, for a log line."""
    import torch

    limit = torch.get_num_threads()
    threads, load = free_core_threads(limit)
    torch.set_num_threads(threads)
    return f"{threads} CPU thread(s): at most {limit} (torch's thread count); {load}"
