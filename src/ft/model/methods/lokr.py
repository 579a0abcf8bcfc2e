"""`adapter: lokr`: Kronecker-product updates (LyCORIS' LoKr)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(task_type="CAUSAL_LM", r=a.lora_r, alpha=a.lora_alpha, module_dropout=a.lora_dropout,
                      target_modules=targets, modules_to_save=to_save)


METHODS.add("lokr", Method("LoKr: the update is a Kronecker product of a small matrix and a low-rank one", build))
