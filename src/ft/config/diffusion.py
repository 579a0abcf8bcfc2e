"""`diffusion` section: training the model as a masked diffusion language model (LLaDA, Nie et al. 2025), Axolotl's
diffusion plugin's `diffusion:` block.

Each row draws t ~ U(0, 1); each of its trained tokens (BOS, EOS and padding never) is replaced by the mask token
with probability p = (1 − eps)·t + eps; the model sees the row with full (bidirectional) attention inside the row
and predicts each masked token from the position before it (the causal model's head kept in place, as Axolotl
and Dream do). The loss of a row is Σ over its masked tokens of CE / p (CE alone without importance_weighting),
divided by the row's trained tokens (its EOS too); the batch's loss is the mean over its rows.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ft.config.base import Contradiction, Section


class DiffusionSettings(Section):
    noise_schedule: Literal["linear", "cosine"] = Field(
        "linear", description="The schedule Axolotl's sampling uses; training draws p linearly in t either way.")
    min_mask_ratio: float = Field(0.1, ge=0, le=1, description="Axolotl's sampling setting (training draws p from eps to 1).")
    max_mask_ratio: float = Field(0.9, ge=0, le=1, description="Axolotl's sampling setting (training draws p from eps to 1).")
    num_diffusion_steps: int = Field(128, ge=1, description="Axolotl's sampling setting: unmasking steps.")
    eps: float = Field(1e-3, ge=0, le=1, description="The least masking probability: p = (1 − eps)·t + eps.")
    importance_weighting: bool = Field(True, description="Divide each masked token's cross-entropy by its p.")
    mask_token_id: Optional[int] = Field(
        None, ge=0, description="The mask token's id (e.g. a reserved special token); one past the vocabulary is "
        "replaced by mask_token_str, added to the vocabulary.")
    mask_token_str: Optional[str] = Field(
        None, description="The mask token as text: used if the tokenizer has it as a special token, else added (default "
        "<|diffusion_mask|>).")
    generate_samples: bool = Field(True, description="Axolotl prints unmasked samples during training; ft does not "
                                   "(accepted, said once).")
    generation_interval: int = Field(100, ge=1, description="Axolotl's sample printing: accepted.")
    num_generation_samples: int = Field(3, ge=1, description="Axolotl's sample printing: accepted.")
    generation_steps: int = Field(128, ge=1, description="Axolotl's sample printing: accepted.")
    generation_temperature: float = Field(0.0, ge=0, description="Axolotl's sample printing: accepted.")
    generation_max_length: int = Field(100, ge=1, description="Axolotl's sample printing: accepted.")

    @model_validator(mode="after")
    def _ratios(self) -> "DiffusionSettings":
        if self.min_mask_ratio > self.max_mask_ratio:
            raise Contradiction("min_mask_ratio", "`min_mask_ratio` is above `max_mask_ratio`")
        return self


class DiffusionConfig(Section):
    diffusion: Optional[DiffusionSettings] = Field(
        None, description="Train as a masked diffusion language model (LLaDA; Axolotl's diffusion plugin's block): "
        "tokens masked at a random rate, full attention within each row, the masked tokens' cross-entropy weighted "
        "by 1/p (docs/methods.md).")
