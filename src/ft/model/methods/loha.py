"""`adapter: loha`: low-rank Hadamard product updates (LyCORIS' LoHa, Hyeon-Woo et al., 2022)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(task_type="CAUSAL_LM", r=a.lora_r, alpha=a.lora_alpha, module_dropout=a.lora_dropout,
                      target_modules=targets, modules_to_save=to_save)


METHODS.add("loha", Method("LoHa: the update is the Hadamard product of two low-rank products (rank up to r²)", build))
