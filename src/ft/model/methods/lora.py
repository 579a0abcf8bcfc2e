"""`adapter: lora` and `adapter: qlora` (LoRA on a 4-bit base), with DoRA, rsLoRA and LoRA on parameters."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM", r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
        target_modules=targets, modules_to_save=to_save, fan_in_fan_out=a.lora_fan_in_fan_out,
        use_rslora=a.peft_use_rslora, use_dora=a.peft_use_dora, bias="none",
        target_parameters=list(a.lora_target_parameters) if a.lora_target_parameters else None,
        init_lora_weights=a.peft_init_lora_weights or True,
    )


METHODS.add("lora", Method("LoRA: trainable low-rank updates B·A beside frozen linear layers", build, bases=(None, 8)))
METHODS.add("qlora", Method("LoRA on a 4-bit (nf4) base", build, bases=(4,)))
