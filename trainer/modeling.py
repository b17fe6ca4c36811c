"""Model plumbing shared by the RM, PPO and evaluation: loading, chat rendering, padding, freezing.

Everything assumes a decoder-only HF model whose backbone is `get_decoder()` / `base_model` and
whose LM head is `get_output_embeddings()` (Llama, Qwen, Mistral, SmolLM...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


def load_tokenizer(model_dir: str | Path):
    """Tokenizer with a pad token (falls back to EOS: padding is always masked out anyway)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir}: tokenizer has no chat template")
    return tokenizer


def load_causal_lm(model_dir: str | Path, device: torch.device | str = "cpu"):
    """fp32 causal LM on `device`, in eval mode (no dropout, so rollout and update log-probs agree)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.to(device).eval()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def eos_token_ids(model, tokenizer) -> list[int]:
    """All ids that end an answer: generation_config's EOS list plus the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def folder_eos_ids(model_dir, tokenizer) -> list[int]:
    """`eos_token_ids` of a checkpoint folder without loading its weights (its generation config,
    else the one its model config implies: what `from_pretrained` would give the model)."""
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig
    try:
        generation = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir)))
    return eos_token_ids(SimpleNamespace(generation_config=generation), tokenizer)


def prompt_token_ids(tokenizer, messages: list[dict], max_tokens: int | None = None) -> list[int]:
    """Chat template with the assistant header, tokenised; left-truncated so the question's end survives."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:] if max_tokens else ids


def answer_token_ids(tokenizer, answer: str, eos_id: int, max_tokens: int, finished: bool = True) -> list[int]:
    """A stored answer as the policy emitted it: its tokens (cut to fit), then EOS if it finished.
    A cut-off answer (finish_reason "length") never emitted EOS: appending one would teach the
    policy to stop mid-sentence when that answer is preferred."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"][: max_tokens - 1]
    return ids if ids and not finished else ids + [eos_id]


def conversation_text(tokenizer, messages: list[dict], answer: str, finished: bool = True) -> str:
    """The full chat (prompt + assistant answer) as the RM sees it. A cut-off answer is left open
    (no end-of-turn), so the RM can tell a truncated reply from a finished one."""
    if not finished:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) + answer
    return tokenizer.apply_chat_template(
        list(messages) + [{"role": "assistant", "content": answer}], tokenize=False)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a rectangle: (ids, attention_mask). Prompts end at the same column, so responses
    appended after them start at the same column too."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(list(s))
            mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(width or 0, max((len(s) for s in sequences), default=0), 1)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as HF `generate` computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def freeze_lower_layers(backbone, trainable_layers: int | None) -> None:
    """Train only the top `trainable_layers` blocks and the final norm: embeddings (and so a tied LM
    head, as in SmolLM2) and the lower blocks stay frozen, so backward stops early — the CPU speed
    knob. An untied LM head lives outside the backbone and keeps training."""
    layers = backbone.layers
    if trainable_layers is None or trainable_layers >= len(layers):
        return  # nothing to freeze (a tiny model with fewer blocks than the default trains fully)
    if trainable_layers < 1:
        raise ValueError("trainable_layers must be >= 1 (or None for all)")
    for p in backbone.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if getattr(backbone, "norm", None) is not None:
        for p in backbone.norm.parameters():
            p.requires_grad_(True)


def response_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_len: int) -> torch.Tensor:
    """Hidden states that predict the last `response_len` tokens of [left-padded prompt | response].

    Position i predicts token i+1, so the slice is [-response_len-1 : -1] (B, R, H). Inputs are
    moved to the model's device (padding helpers build them on the CPU).
    """
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state[:, -response_len - 1:-1]


def response_logits(model, input_ids, attention_mask, response_len: int) -> torch.Tensor:
    """LM logits for the response positions only (saves the full-sequence vocab projection)."""
    return model.get_output_embeddings()(response_hidden(model, input_ids, attention_mask, response_len))


def fresh_output_dir(out_dir: str | Path) -> tuple[Path, Path]:
    """(final, partial) paths: write into `partial`, then `publish` renames it, so a crash never
    leaves a half-written checkpoint where the server could pick it up."""
    final = Path(out_dir)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty; checkpoints are immutable")
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        import shutil
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return final, partial


def publish(partial: Path, final: Path) -> Path:
    if final.exists():
        final.rmdir()  # empty (checked in fresh_output_dir)
    partial.rename(final)
    return final
