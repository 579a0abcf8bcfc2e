"""`adapter: vera`: frozen random low-rank matrices shared by all layers, trained scaling vectors (Kopiczko et al.)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import VeraConfig

    return VeraConfig(task_type="CAUSAL_LM", r=a.lora_r, vera_dropout=a.lora_dropout, target_modules=targets,
                      modules_to_save=to_save, save_projection=True)


METHODS.add("vera", Method("VeRA: shared frozen random projections, a trained scale per rank and per output", build))
