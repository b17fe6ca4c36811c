"""Decoding defaults that travel with a model folder, in its generation_config.json.

Why there: every greedy answer the system judges (the gate's, the demo report's, RAFT's loop check)
comes from HF `generate`, and every served answer from vLLM (`generation_config="auto"`); both fill
the sampling parameters a call does not set from the model folder's generation_config.json. A default
written there (here: `repetition_penalty`) therefore decodes the same way in the gate, the report and
serving, and a version the gate passed is judged on the answers users get. Trained versions inherit
it: the trainer saves the actor's generation_config with its weights. Sampled training rollouts set
`repetition_penalty=1.0` explicitly (trainer/rollout.py): PPO/RAFT must sample from π itself.

The penalty is CTRL's (Keskar et al. 2019), as both libraries implement it: the logit of every token
already in the prompt or the answer so far is divided by it when positive, multiplied when negative.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.registry import copy_tree_linked

CONFIG_FILE = "generation_config.json"


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# the sampling defaults vLLM takes from generation_config.json (ModelConfig.get_diff_sampling_param),
# with the values its SamplingParams accepts
DECODING_KEYS = {"repetition_penalty": (0.0, None), "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
                 "temperature": (0.0, None), "top_p": (0.0, 1.0), "top_k": (-1, None), "min_p": (0.0, 1.0)}


def generation_defaults(model_dir: str | Path) -> dict:
    """The folder's generation_config.json; without one, the special token ids of its config.json
    (what HF derives a generation config from then), so a written file never loses the EOS."""
    path, model_config = Path(model_dir) / CONFIG_FILE, Path(model_dir) / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    config = json.loads(model_config.read_text()) if model_config.exists() else {}
    return {k: config[k] for k in TOKEN_IDS if config.get(k) is not None}


def with_generation_defaults(src: str | Path, dst: str | Path, **defaults) -> Path:
    """`dst`: a copy of the model folder `src` (files hard-linked, so a 500 MB model costs nothing)
    whose generation_config.json also holds `defaults`. The config is written as a new file, never
    edited in place: a hard-linked file shares its content with `src`, which must stay as it was.
    An existing `dst` is replaced."""
    src, dst = Path(src), Path(dst)
    config = {**generation_defaults(src), **defaults}
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    copy_tree_linked(src, tmp)
    (tmp / CONFIG_FILE).unlink(missing_ok=True)            # drop the link before writing
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def check_decoding(decoding: dict) -> str:
    """What is wrong with a set of decoding defaults ("" when nothing): an unknown key, a value that is
    not a number or out of vLLM's range (repetition_penalty and top_p above 0, temperature at least 0)."""
    for key, value in decoding.items():
        if key not in DECODING_KEYS:
            return f"unknown decoding key {key!r} (known: {', '.join(DECODING_KEYS)})"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} must be a number (got {value!r})"
        low, high = DECODING_KEYS[key]
        open_low = key in ("repetition_penalty", "top_p")
        if (value <= low if open_low else value < low) or (high is not None and value > high):
            return f"{key} {value} is out of range ({'>' if open_low else '>='} {low}{f', <= {high}' if high is not None else ''})"
    return ""


def describe_decoding(decoding: dict) -> str:
    """'repetition penalty 1.1, presence penalty 1' for a report."""
    return ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in decoding.items())
