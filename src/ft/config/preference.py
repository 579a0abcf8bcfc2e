"""`preference` section: training on pairs of a chosen and a rejected answer (DPO and its relatives)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ft.config.base import Contradiction, Section

# The losses that compare the trained model with a frozen reference; the others need none.
WITH_REFERENCE = ("dpo", "ipo", "kto")
PAIR_METHODS = ("dpo", "ipo", "orpo", "simpo", "kto")


class PreferenceConfig(Section):
    rl: Optional[Literal["dpo", "ipo", "orpo", "simpo", "kto", "ebft", "grpo", "gdpo"]] = Field(
        None,
        description="Preference training on rows of a prompt, a chosen and a rejected answer: dpo (sigmoid loss), "
        "ipo, orpo, simpo; kto on rows of a prompt, one answer and whether it is desirable; ebft: energy-based "
        "fine-tuning on the model's own samples, scored by their features against the rows' answers (the `ebft:` and "
        "`trl:` blocks); grpo: the model's own samples scored by reward functions (`trl.reward_funcs`), gdpo: the same "
        "with each reward normalized by itself (docs/preference.md). Unset: supervised training.",
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
    kto_desirable_weight: float = Field(
        1.0, gt=0, description="`rl: kto`: λ_D, the weight of the desirable answers' loss (Axolotl's and TRL's key).")
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="`rl: kto`: λ_U, the weight of the undesirable answers' loss.")
    dpo_label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="`rl: dpo`: the share of pairs assumed mislabelled (conservative DPO).",
    )

    reward_model: bool = Field(
        False, description="Train a reward model on the pairs (Bradley-Terry, as TRL's RewardTrainer): the model with a "
        "one-number head on its last token, the loss -log σ(r_chosen - r_rejected). Axolotl's key.")
    num_labels: Optional[int] = Field(None, description="The head's outputs: 1 with reward_model; the classes of each "
                                      "step with process_reward_model (default 2: wrong, right). Axolotl's key.")
    process_reward_model: bool = Field(
        False, description="Train a process reward model (TRL's PRMTrainer, Axolotl's key): the model with a head that "
        "classifies each reasoning step at its last token (`type: stepwise_supervised` rows), cross-entropy on those "
        "tokens only.")
    center_rewards_coefficient: Optional[float] = Field(
        None, ge=0, description="reward_model: adds this × mean((r_chosen + r_rejected)²) to the loss, keeping the "
        "rewards centred on zero (TRL's and Axolotl's key; 0.01 is theirs).")

    @model_validator(mode="after")
    def _reward_model(self) -> "PreferenceConfig":
        if self.reward_model and self.rl:
            raise Contradiction("reward_model", f"`reward_model` trains a scorer of answers and `rl: {self.rl}` the "
                                "answers' generator; keep one")
        if self.process_reward_model and (self.reward_model or self.rl):
            other = "`reward_model` scores whole texts" if self.reward_model else f"`rl: {self.rl}` trains the generator"
            raise Contradiction("process_reward_model", f"`process_reward_model` scores each step, and {other}; keep one")
        if self.process_reward_model:
            if self.num_labels is not None and self.num_labels < 2:
                raise Contradiction("num_labels", "a process reward model classifies each step: `num_labels: 2` or more")
            return self
        if self.num_labels is not None and not self.reward_model:
            raise Contradiction("num_labels", "Axolotl's `num_labels` without `reward_model` (sequence classification) is "
                                "not supported by ft yet; ft trains reward models (`reward_model: true`) and process "
                                "reward models (`process_reward_model: true`)")
        if self.num_labels not in (None, 1):
            raise Contradiction("num_labels", f"a reward model gives one number per text: `num_labels: 1`, not "
                                f"{self.num_labels}")
        if self.center_rewards_coefficient is not None and not self.reward_model:
            raise Contradiction("center_rewards_coefficient", "`center_rewards_coefficient` shapes a reward model's loss: "
                                "set `reward_model: true`")
        return self

    @property
    def reward_loss(self) -> str:
        """A reward model's loss in words (ft validate, ft train)."""
        c = self.center_rewards_coefficient
        return "-log σ(r_chosen - r_rejected)" + (f" + {c:g} × mean((r_chosen + r_rejected)²)" if c else "")

    @property
    def pairs_method(self) -> Optional[str]:
        """The preference loss trained on pairs (dpo, ipo, orpo, simpo), None otherwise (ebft trains on samples)."""
        return self.rl if self.rl in PAIR_METHODS else None

    @property
    def step_classes(self) -> Optional[int]:
        """A process reward model's classes per step, None for other runs."""
        return (self.num_labels or 2) if self.process_reward_model else None

    @property
    def samples(self) -> bool:
        """Whether the run trains on the model's own samples (ebft, grpo, gdpo)."""
        return self.rl in ("ebft", "grpo", "gdpo")

    @property
    def trains_pairs(self) -> bool:
        """Whether the run reads preference pairs (preference training or a reward model)."""
        return self.pairs_method is not None or self.reward_model

    @property
    def reference(self) -> bool:
        """Whether the loss compares with a frozen reference model."""
        return self.rl in WITH_REFERENCE
