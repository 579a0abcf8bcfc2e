"""`adapter` section: LoRA / QLoRA settings (PEFT). No adapter means full fine-tuning."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ft.config.base import Contradiction
from ft.config.context import canonical

from ft.config.base import Section


class LoftQOptions(Section):
    """`peft: loftq_config:` (Axolotl's and PEFT's names)."""

    loftq_bits: Literal[4, 8] = Field(4, description="The precision LoftQ quantizes the base weights to: 4 (nf4) or 8 (int8).")
    loftq_iter: int = Field(1, ge=1, le=8, description="Alternations of quantizing and fitting the low-rank residual.")


class PeftOptions(Section):
    """`peft:` PEFT settings nested as Axolotl writes them."""

    loftq_config: Optional[LoftQOptions] = Field(
        None, description="LoftQ (Li et al.): the base's targeted weights are quantized and LoRA starts as the best "
        "rank-r fit of what quantizing lost; the run trains (and ft later loads and merges) on that quantized base.")


class AdapterConfig(Section):
    adapter: Optional[str] = Field(
        None, description="The parameter-efficient method: lora, qlora (LoRA on a 4-bit base), ia3, loha, lokr, vera, "
        "prompt_tuning, prefix_tuning (docs/methods.md); unset for full fine-tuning."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: Optional[tuple[str, ...]] = Field(
        None, description="Module names (or suffixes) to adapt, e.g. [q_proj, v_proj]; or one regular expression "
        "that whole module names must match, e.g. 'model.layers.[\\d]+.(mlp|self_attn).(up|down|q|v)_proj' (as PEFT "
        "reads a single string)."
    )
    lora_target_parameters: Optional[tuple[str, ...]] = Field(
        None, description="Parameter names (or suffixes) to adapt directly, for weights that are not linear layers, "
        "e.g. mixture-of-experts weights stored as one tensor ([mlp.experts.gate_up_proj, mlp.experts.down_proj]).")
    lora_target_linear: bool = Field(False, description="Adapt every linear layer except the output head.")
    lora_modules_to_save: Optional[tuple[str, ...]] = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head)."
    )
    lora_model_dir: Optional[str] = Field(None, description="An adapter to continue training from (or to merge).")
    lora_fused: bool = Field(
        True, description="LoRA's update computed as one matmul pair and added in place into the base layer's output, "
        "its backward reusing the input the base layer keeps (ft.model.fused_lora): the gradients of PEFT's path, "
        "less memory (no per-layer input copy) and fewer passes. PEFT's own path runs where it does not apply "
        "(dropout, DoRA, a LoRA bias, an 8-bit base, several adapters, ZeRO-3); false: PEFT's path everywhere.")
    lora_fan_in_fan_out: bool = Field(False, description="Set for models whose linear weights are stored transposed.")
    peft_use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r).")
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")
    peft_init_lora_weights: Optional[Literal["pissa", "olora"]] = Field(
        None, description="LoRA's start: unset, A random and B zero; pissa: A and B from the weight's top singular "
        "vectors (Meng et al.), olora: from its QR decomposition; both take that part out of the base weight, and "
        "the adapter ft saves is converted (rank 2r) so that it applies to the original base (Axolotl's key).")
    peft: PeftOptions = Field(default_factory=PeftOptions, description="PEFT settings under `peft:` (LoftQ).")
    relora: bool = Field(False, description="ReLoRA (Lialin et al.): every `jagged_restart_steps` steps LoRA is merged "
                         "into the base, started afresh and most of its optimizer state pruned, so the run trains a "
                         "sum of low-rank updates; it writes a whole model (docs/methods.md).")
    relora_prune_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="ReLoRA: the share of LoRA's optimizer state zeroed at each restart (default "
        "0.9; 0.999 with relora_prune_method: reset).")
    relora_prune_method: Literal["magnitude", "random", "reset"] = Field(
        "magnitude", description="ReLoRA: which optimizer state is zeroed: the smallest (magnitude), a random share "
        "(random), nearly all (reset: random at 0.999 unless relora_prune_ratio says).")
    relora_cpu_offload: Optional[bool] = Field(
        None, description="Axolotl merges on the CPU with it; ft merges where the weights are (a 4-bit base's 16-bit "
        "copy is kept in CPU memory either way).")
    bottleneck_size: int = Field(64, ge=1, description="bottleneck: the width each adapter projects down to.")
    bottleneck_activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="bottleneck: the nonlinearity between the two projections.")
    num_virtual_tokens: int = Field(20, ge=1, description="prompt_tuning, prefix_tuning: virtual tokens before each row.")
    prompt_tuning_init_text: Optional[str] = Field(
        None, description="prompt_tuning: start the virtual tokens from this text's embeddings (else random).")
    prefix_projection: bool = Field(
        False, description="prefix_tuning: make the prefix through a trained MLP (P-tuning v2's reparameterisation).")
    prefix_encoder_hidden_size: Optional[int] = Field(
        None, ge=1, description="prefix_tuning with prefix_projection: the MLP's width (default: the model's).")
    loraplus_lr_ratio: Optional[float] = Field(
        None, gt=0, description="LoRA+: the B matrices learn at this many times learning_rate (Hayou et al.; 16 is "
        "the paper's choice).")
    loraplus_lr_embedding: Optional[float] = Field(
        None, gt=0, description="LoRA+: the learning rate of LoRA's embedding layers (default 1e-6, PEFT's).")
    unfrozen_parameters: Optional[tuple[str, ...]] = Field(
        None, description="Train only the parameters whose names match one of these patterns (Python regular "
        "expressions matched from the start of the name, a `.` literal unless followed by `+`, as Axolotl reads "
        "them); every other weight is frozen. With an adapter: only its weights on matching layers train (e.g. the "
        "language model's and not a vision tower's), named as in the base model.")

    @field_validator("lora_target_modules", "lora_modules_to_save", "lora_target_parameters", "unfrozen_parameters",
                     mode="before")
    @classmethod
    def _one_name_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("lora_target_modules")
    @classmethod
    def _one_regex_alone(cls, v: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        import re

        if v and any(map(is_regex, v)):
            if len(v) > 1:
                raise ValueError("a regular expression is given alone, as one string (PEFT's form); list module "
                                 "names, or write one expression with `|` between the alternatives")
            try:
                re.compile(v[0])
            except re.error as exc:
                raise ValueError(f"`{v[0]}` is not a regular expression ({exc})") from None
        return v

    @field_validator("adapter")
    @classmethod
    def _registered_method(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        return canonical(info, "adapters", v) if v is not None else v

    @field_validator("unfrozen_parameters")
    @classmethod
    def _patterns(cls, v: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        import re

        for pattern in v or ():
            try:
                re.compile(parameter_regex(pattern))
            except re.error as exc:
                raise ValueError(f"`{pattern}` is not a regular expression ({exc})") from None
        return v

    @model_validator(mode="after")
    def _unfrozen_is_full_fine_tuning(self) -> "AdapterConfig":
        has = f"`adapter: {self.adapter}`" if self.adapter else "no `adapter:`"
        if self.peft_init_lora_weights and self.adapter != "lora":
            raise Contradiction("peft_init_lora_weights", f"{self.peft_init_lora_weights} starts LoRA from the base weights "
                                f"and changes them, which needs `adapter: lora` on a 16-bit base; this run has {has}")
        if self.peft.loftq_config and (self.adapter != "lora" or self.peft_init_lora_weights):
            other = f"`peft_init_lora_weights: {self.peft_init_lora_weights}`" if self.peft_init_lora_weights else has
            raise Contradiction("peft", "LoftQ quantizes the base's weights itself and starts LoRA from what that "
                                f"lost, which needs `adapter: lora` on a 16-bit base; this run has {other}")
        if self.peft.loftq_config and self.lora_target_parameters:
            raise Contradiction("peft", "LoftQ quantizes linear layers' weights; `lora_target_parameters` adds LoRA to other "
                                "tensors, which it does not start: remove one of them")
        if self.lora_target_parameters and self.adapter not in ("lora", "qlora"):
            raise Contradiction("lora_target_parameters", f"it adds LoRA to parameters, and this run has {has}")
        if (self.loraplus_lr_ratio or self.loraplus_lr_embedding) and self.adapter not in ("lora", "qlora"):
            key = "loraplus_lr_ratio" if self.loraplus_lr_ratio else "loraplus_lr_embedding"
            raise Contradiction(key, f"LoRA+ sets the learning rates of LoRA's matrices, and this run has {has}")
        return self


REGEX_CHARACTERS = set("\\[](|)*+?^$")


def is_regex(name: str) -> bool:
    """A lora_target_modules entry written as a regular expression (PEFT's single-string form), not a name."""
    return bool(REGEX_CHARACTERS & set(name))


def parameter_regex(pattern: str) -> str:
    """An unfrozen_parameters pattern as a Python regex: `.` is literal unless it is `.+` (Axolotl's reading)."""
    import re

    return re.sub(r"\.(?!\+)", r"\\.", pattern)
