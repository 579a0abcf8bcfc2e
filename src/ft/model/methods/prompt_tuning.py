"""`adapter: prompt_tuning`: trainable virtual token embeddings before every row (Lester et al., 2021)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    text = a.prompt_tuning_init_text
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
                              prompt_tuning_init_text=text, tokenizer_name_or_path=source if text else None)


METHODS.add("prompt_tuning", Method("prompt tuning: num_virtual_tokens trained embeddings before each row (random or "
                                    "from prompt_tuning_init_text)", build, prompt_learning=True, mergeable=False,
                                    bases=(None, 8, 4), targets_linear=False))
