"""Small model folders the tests derive from the tiny random Llama."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.modeling import load_causal_lm


def shifted_copy(model_dir: str | Path, folder: Path, delta: float = 0.01) -> Path:
    """A copy of the model in `folder` with `delta` added to every weight (a "served" version that
    differs from its anchor by a known amount), with the same tokenizer."""
    model = load_causal_lm(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(delta)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder
