"""`adapter` section: LoRA / QLoRA settings (PEFT). No adapter means full fine-tuning."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ft.config.base import Section


class AdapterConfig(Section):
    adapter: Optional[Literal["lora", "qlora"]] = Field(
        None, description="`lora`, `qlora` (LoRA on a 4-bit base), or unset for full fine-tuning."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: Optional[tuple[str, ...]] = Field(
        None, description="Module names (or suffixes) to adapt, e.g. [q_proj, v_proj]."
    )
    lora_target_linear: bool = Field(False, description="Adapt every linear layer except the output head.")
    lora_modules_to_save: Optional[tuple[str, ...]] = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head)."
    )
    lora_model_dir: Optional[str] = Field(None, description="An adapter to continue training from (or to merge).")
    lora_fan_in_fan_out: bool = Field(False, description="Set for models whose linear weights are stored transposed.")
    peft_use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r).")
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")

    @field_validator("lora_target_modules", "lora_modules_to_save", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v
