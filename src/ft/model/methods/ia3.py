"""`adapter: ia3`: learned vectors that rescale the keys, values and the MLP's input (Liu et al., 2022)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import IA3Config

    # feedforward modules (their input is scaled, not their output): the MLP's down projection by PEFT's defaults
    feedforward = [t for t in targets if t.endswith(("down_proj", "fc2", "w2"))] if targets else None
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward,
                     modules_to_save=to_save)


METHODS.add("ia3", Method("(IA)³: a learned scale per channel of chosen layers; the fewest parameters", build,
                          bases=(None, 8, 4)))
