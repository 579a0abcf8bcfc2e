"""`distillation` section: a frozen teacher's distribution trains the model (knowledge distillation).

The loss per trained token, with p the teacher's and q the student's distribution at temperature T:
`kd_alpha · T² · D(p, q) + kd_ce_alpha · CE(student, label)`, where D is the forward KL(p‖q) (kd_beta 0, the
seed's), the reverse KL(q‖p) (kd_beta 1), or between them the generalized Jensen-Shannon divergence
β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q (TRL's GKD). Key names beside Axolotl's kd plugin's.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ft.config.base import Contradiction, Section

KD_KEYS = ("kd_alpha", "kd_ce_alpha", "kd_temperature", "kd_beta", "kd_top_k", "kd_cache", "teacher_load_in_4bit",
           "teacher_load_in_8bit", "teacher_dtype", "teacher_attn_implementation")


class DistillationConfig(Section):
    teacher_model: Optional[str] = Field(
        None, description="Hub id or local folder of the teacher: frozen, in eval mode, never saved. It must share the "
        "model's tokenizer. Unset: no distillation.")
    teacher_load_in_4bit: bool = Field(False, description="Load the teacher in 4 bits (bitsandbytes nf4).")
    teacher_load_in_8bit: bool = Field(False, description="Load the teacher in 8 bits (bitsandbytes LLM.int8).")
    teacher_dtype: Optional[Literal["bfloat16", "float16", "float32"]] = Field(
        None, description="The teacher's dtype (and its 4-bit compute dtype). Default: the training dtype.")
    teacher_attn_implementation: Optional[str] = Field(
        None, description="The teacher's attn_implementation. Default: the model's.")
    kd_alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term (the seed's alpha).")
    kd_ce_alpha: Optional[float] = Field(
        None, ge=0, description="Weight of the cross-entropy term on the labels. Default: 1 − kd_alpha (the seed's).")
    kd_temperature: float = Field(1.0, gt=0, description="T: both distributions are softened by it; the distillation "
                                  "term is scaled by T² so that its gradients keep their size.")
    kd_beta: float = Field(0.0, ge=0, le=1, description="0: forward KL(teacher‖student), the seed's; 1: reverse "
                           "KL(student‖teacher); between: the generalized Jensen-Shannon divergence.")
    kd_top_k: Optional[int] = Field(
        None, ge=1, description="Compare the distributions over the teacher's k most likely tokens and one bucket "
        "holding the rest of each distribution's mass (docs/distillation.md says what that approximates). Unset: the "
        "whole vocabulary, exact.")
    kd_cache: bool = Field(
        False, description="Run the teacher once over the prepared rows (`ft preprocess` or the run's start) and keep "
        "its top-k log-probabilities beside the prepared data: training then holds no teacher in memory. Needs kd_top_k.")

    @model_validator(mode="after")
    def _settings_that_hold_together(self) -> "DistillationConfig":
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise Contradiction("teacher_load_in_8bit", "`teacher_load_in_4bit` and `teacher_load_in_8bit` are both true; keep one")
        if self.kd_cache and self.kd_top_k is None:
            raise Contradiction("kd_cache", "the cache keeps the teacher's top-k log-probabilities: set `kd_top_k` (e.g. 64)")
        if self.ce_weight == 0 and self.kd_alpha == 0:
            raise Contradiction("kd_alpha", "`kd_alpha` and `kd_ce_alpha` are both 0: nothing would train")
        return self

    @property
    def on(self) -> bool:
        return self.teacher_model is not None

    @property
    def ce_weight(self) -> float:
        return 1 - self.kd_alpha if self.kd_ce_alpha is None else self.kd_ce_alpha

    @property
    def divergence(self) -> str:
        return {0.0: "forward KL(teacher‖student)", 1.0: "reverse KL(student‖teacher)"}.get(
            self.kd_beta, f"generalized JSD (β {self.kd_beta:g})")

    def written(self) -> list[str]:
        """The kd keys the config sets (they need a teacher, or rows that carry its log-probabilities)."""
        return [k for k in KD_KEYS if k in self.model_fields_set]

    def describe(self) -> str:
        over = f"the teacher's top {self.kd_top_k} tokens and the rest as one bucket" if self.kd_top_k else "the whole vocabulary"
        source = "cached top-k log-probabilities" if self.kd_cache else "live"
        teacher = f"{self.teacher_model} ({source})" if self.teacher_model else "the log-probabilities the rows carry"
        return (f"from {teacher}: {self.kd_alpha:g} · T² · {self.divergence} + {self.ce_weight:g} · "
                f"cross-entropy, T {self.kd_temperature:g}, over {over}")
