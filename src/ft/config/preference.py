"""`preference` section: training on pairs of a chosen and a rejected answer (DPO and its relatives)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ft.config.base import Section

# The losses that compare the trained model with a frozen reference; the others need none.
WITH_REFERENCE = ("dpo", "ipo")


class PreferenceConfig(Section):
    rl: Optional[Literal["dpo", "ipo", "orpo", "simpo"]] = Field(
        None,
        description="Preference training on rows of a prompt, a chosen and a rejected answer: dpo (sigmoid loss), "
        "ipo, orpo, simpo. Unset: supervised training.",
    )
    rl_beta: float = Field(
        0.1, gt=0, description="β: how far the trained model may move from the reference (dpo, ipo); the reward "
        "scale (simpo).",
    )
    orpo_alpha: float = Field(0.1, gt=0, description="`rl: orpo`: λ, the weight of the odds-ratio term beside the "
                              "chosen answers' loss.")
    simpo_gamma: float = Field(0.5, ge=0, description="`rl: simpo`: the target reward margin γ.")
    precompute_ref_log_probs: bool = Field(
        False, description="dpo, ipo: compute the reference's log-probabilities of every answer once, before the first "
        "step, and keep them beside the prepared data (keyed by the data, model, adapter and precision): no reference "
        "forward per step, and no frozen copy for full fine-tuning.",
    )
    dpo_label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="`rl: dpo`: the share of pairs assumed mislabelled (conservative DPO).",
    )

    @property
    def reference(self) -> bool:
        """Whether the loss compares with a frozen reference model."""
        return self.rl in WITH_REFERENCE
