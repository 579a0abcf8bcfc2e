"""`adapter: prefix_tuning`: trained keys and values before every row, in every layer (Li & Liang, 2021); with
`prefix_projection: true`, through a reparameterising MLP (P-tuning v2's deep prompts, Liu et al., 2022)."""

from __future__ import annotations

from typing import Any, Optional

from ft.model.methods import METHODS, Method


def build(a: Any, targets: Optional[list[str]], to_save: Optional[list[str]], source: str) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.num_virtual_tokens,
                              prefix_projection=a.prefix_projection, encoder_hidden_size=a.prefix_encoder_hidden_size)


class Prefix(Method):
    def refusal(self, name: str, cfg: Any) -> Optional[tuple[str, str]]:
        if cfg.training.gradient_checkpointing:
            return "gradient_checkpointing", ("`adapter: prefix_tuning` gives every layer cached keys and values, which "
                                              "PEFT cannot recompute under checkpointing: set `gradient_checkpointing: false`")
        return super().refusal(name, cfg)


METHODS.add("prefix_tuning", Prefix("prefix tuning / P-tuning v2: trained keys and values before each row in every "
                                    "layer", build, prompt_learning=True, mergeable=False, bases=(None, 8, 4),
                                    targets_linear=False))
