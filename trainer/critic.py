"""PPO's critic: a separate model (backbone + scalar head), initialised from the reward model and
kept across runs beside its policy.

Why a separate model initialised from the RM (OpenRLHF's and TRL's choice) rather than a fresh
value head on the actor: the RM already predicts the sequence score that dominates the return,
so values are informative from the first step, and GAE stops dumping all credit on the last
token; the critic's gradients no longer share the actor's backbone or its clip norm. The cost is
one more forward per rollout and a backward through `critic_trainable_layers` blocks per update.

The RM's head has no bias (Llama's `score` is Linear(..., bias=False)), so the normalisation
PPO applies to scores, (r - mean) / std, is folded in as a head rescale plus a learned offset.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.modeling import freeze_lower_layers, model_device, position_ids_from_mask

CRITIC_FILE = "critic.json"


class Critic(torch.nn.Module):
    def __init__(self, model, offset: float = 0.0):
        super().__init__()
        self.model = model.eval()  # no dropout: values at rollout and update time agree
        self.offset = torch.nn.Parameter(torch.tensor(float(offset), device=model_device(model)))

    @classmethod
    def load(cls, folder: str | Path, device, trainable_layers: int | None,
             reward_mean: float | None = None, reward_std: float | None = None) -> "Critic":
        """From a saved critic, or from an RM folder (then `reward_mean/std` rescale its head so the
        initial values are normalised RM scores, the scale PPO's returns are on)."""
        from transformers import AutoModelForSequenceClassification
        folder = Path(folder)
        # num_labels=1: a policy folder (the start when the RM has no transformer) has no scalar head yet
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1,
                                                                   dtype=torch.float32).to(device)
        offset = 0.0
        if (folder / CRITIC_FILE).exists():
            offset = json.loads((folder / CRITIC_FILE).read_text())["offset"]
        elif reward_std:
            with torch.no_grad():
                model.score.weight.div_(reward_std)
            offset = -(reward_mean or 0.0) / reward_std
        freeze_lower_layers(model.base_model, trainable_layers)
        for p in model.score.parameters():
            p.requires_grad_(True)
        return cls(model, offset)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
        """V(s_t) for the states that emit each of the last `response_len` tokens: (B, R)."""
        device = model_device(self.model)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids_from_mask(attention_mask),
                                       use_cache=False).last_hidden_state[:, -response_len - 1:-1]
        return self.model.score(hidden).squeeze(-1).float() + self.offset

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, folder: Path, tokenizer) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        (folder / CRITIC_FILE).write_text(json.dumps({"offset": self.offset.item()}))
