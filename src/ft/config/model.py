"""`model` and `quantization` sections: what to load and how."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ft.config.base import Section
from ft.config.context import canonical


class SpecialTokens(Section):
    bos_token: Optional[str] = Field(None, description="Beginning-of-sequence token text.")
    eos_token: Optional[str] = Field(None, description="End-of-sequence token text.")
    pad_token: Optional[str] = Field(
        None, description="Padding token text. When unset and the tokenizer has none, ft adds one."
    )
    unk_token: Optional[str] = Field(None, description="Unknown-token text.")


ATTENTIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")  # transformers' own names


class ModelConfig(Section):
    base_model: str = Field(..., description="Hub id or local folder of the model to fine-tune.")
    base_model_config: Optional[str] = Field(
        None, description="Hub id or folder to read the model config from, when it differs from base_model."
    )
    cls_model_config: Optional[str] = Field(
        None, pattern=r"^[A-Z][A-Za-z0-9]*Config$", description="A transformers config class to read the model's config "
        "with (Axolotl's key), e.g. Gemma3TextConfig: the text model of a checkpoint whose own config is multimodal.")
    tokenizer_config: Optional[str] = Field(
        None, description="Hub id or folder of the tokenizer, when it differs from base_model."
    )
    model_type: Optional[str] = Field(
        None, description="Accepted for Axolotl configs; ft always loads with AutoModelForCausalLM."
    )
    tokenizer_type: Optional[str] = Field(
        None, description="Accepted for Axolotl configs; ft always loads with AutoTokenizer."
    )
    tokenizer_use_fast: bool = Field(True, description="Use the fast (Rust) tokenizer.")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model or tokenizer. Only for sources you trust."
    )
    revision_of_model: Optional[str] = Field(None, description="Git revision (branch, tag or commit) on the hub.")
    special_tokens: SpecialTokens = Field(
        default_factory=SpecialTokens, description="Special tokens to set on the tokenizer (bos/eos/pad/unk)."
    )
    tokens: tuple[str, ...] = Field(
        (), description="Extra tokens to add to the vocabulary; their embeddings are resized and trained."
    )
    chat_template: Optional[str] = Field(
        None,
        description="Chat template for the tokenizer: `tokenizer_default` (the tokenizer's own) or a "
        "named one (chatml, llama3, phi3, gemma). Used by `type: chat_template` datasets.",
    )
    chat_template_jinja: Optional[str] = Field(
        None, description="A Jinja chat template given in full; wins over chat_template."
    )
    chat_template_kwargs: Optional[dict[str, Any]] = Field(
        None, description="Variables the tokenizer's chat template is rendered with, e.g. {enable_thinking: false}: "
        "written into the template itself, so training, inference and the saved tokenizer all use them (Axolotl's key).",
    )
    bf16: bool | Literal["auto", "full"] = Field(
        "auto",
        description="Train in bfloat16: bf16 compute, and fp32 master weights (and gradients and optimizer states) "
        "for trainable full-size weights, so that updates smaller than 1/256 of a weight are kept. `full`: pure "
        "bf16, trainable weights stored and updated in bf16 (4 bytes per trainable parameter less, and more for "
        "AdamW's states; most small updates are lost: scripts/bench_precision.py). `auto`: bf16 on GPUs that "
        "support it, else fp16 on GPU, fp32 on CPU.",
    )
    fp16: Optional[bool] = Field(None, description="Train in float16 with loss scaling.")
    tf32: bool = Field(False, description="Allow TF32 matmuls on Ampere and newer GPUs.")
    liger_rms_norm: bool = Field(False, description="RMSNorm by Liger's Triton kernel (CUDA GPUs; `pip install ft[liger]`) "
                                 "in every norm of the model: less memory and time in the norms; without a GPU the model's own.")
    liger_rope: bool = Field(False, description="The rotary embedding by Liger's Triton kernel (CUDA GPUs).")
    liger_glu_activation: bool = Field(False, description="The MLP's gated activation (SwiGLU; GeGLU for Gemma) by "
                                       "Liger's Triton kernel, which recomputes the activation in the backward pass (CUDA GPUs).")
    flash_attention: bool = Field(
        False,
        description="Use flash_attention_2. Needs flash-attn (`pip install ft[flash]`, GPU only); without it "
        "ft falls back to sdpa with a warning.",
    )
    sdp_attention: bool = Field(False, description="Use PyTorch scaled_dot_product_attention (sdpa).")
    eager_attention: bool = Field(False, description="Use the plain eager attention implementation.")
    attn_implementation: Optional[str] = Field(
        None, description="An explicit transformers attn_implementation; wins over the three switches above."
    )
    experts_implementation: Optional[Literal["eager", "grouped_mm", "batched_mm"]] = Field(
        None, description="Mixture-of-experts models: how transformers runs the experts (one grouped matmul, "
        "batched matmuls, or a loop over experts). Default: grouped_mm where the model supports it.")
    model_quantization_config: Optional[Literal["Mxfp4Config", "FineGrainedFP8Config"]] = Field(
        None, description="A checkpoint stored in MXFP4 (gpt-oss) or block FP8 (DeepSeek, Qwen3 FP8), read back in the "
        "training dtype: needs `model_quantization_config_kwargs: {dequantize: true}` (training on MXFP4 or FP8 "
        "weights themselves is not supported). A checkpoint in 16 bits loads as it is.")
    model_quantization_config_kwargs: Optional[dict[str, Any]] = Field(
        None, description="Arguments of model_quantization_config's transformers class, e.g. {dequantize: true}.")
    reinit_weights: bool = Field(
        False, description="Pretraining from scratch: the model's architecture with freshly initialised weights "
        "(transformers' own initialisation, seeded by `seed`); the checkpoint's weights are not read.")
    model_config_overrides: Optional[dict[str, Any]] = Field(
        None, description="Values set on the model's config before it is built, e.g. {output_router_logits: true} "
        "(Axolotl's `model_config`, also accepted as that name).")
    resize_token_embeddings_to_32x: bool = Field(
        False, description="Pad the embeddings (and head) to a multiple of 32 rows: faster matmuls on GPUs; the "
        "padding rows are never produced by the tokenizer.")

    @model_validator(mode="after")
    def _dequantized(self) -> "ModelConfig":
        kwargs = self.model_quantization_config_kwargs or {}
        if kwargs and not self.model_quantization_config:
            raise ValueError("`model_quantization_config_kwargs` needs `model_quantization_config` (Mxfp4Config or "
                             "FineGrainedFP8Config)")
        if self.model_quantization_config and kwargs.get("dequantize") is not True:
            raise ValueError(f"`model_quantization_config: {self.model_quantization_config}`: ft trains on the "
                             "checkpoint's weights read back in the training dtype; add "
                             "`model_quantization_config_kwargs: {dequantize: true}`")
        return self

    @field_validator("attn_implementation")
    @classmethod
    def _known_attention(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v.removeprefix("paged|") not in ATTENTIONS:
            from ft.registry import did_you_mean

            raise ValueError(f"`{v}` is not an attention transformers has{did_you_mean(v, ATTENTIONS)}; valid: "
                             f"{', '.join(ATTENTIONS)}")
        return v

    @field_validator("tokens", mode="before")
    @classmethod
    def _one_token_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        for name in v or {}:
            if not str(name).isidentifier():
                raise ValueError(f"`{name}` is not a name a chat template can read; use letters, digits and _")
        return v

    @field_validator("chat_template")
    @classmethod
    def _registered_template(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        return canonical(info, "chat_templates", v) if v is not None else v

    @property
    def precision(self) -> Literal["bf16", "fp16", "fp32", "auto"]:
        """The training precision asked for; `auto` is resolved against the hardware when training."""
        if self.fp16:
            return "fp16"
        if self.bf16 == "auto":
            return "auto"
        return "bf16" if self.bf16 else "fp32"

    @property
    def pure_bf16(self) -> bool:
        """`bf16: full`: trainable weights stored and updated in bf16, no fp32 master copy."""
        return self.bf16 == "full"

    @property
    def attention_request(self) -> Optional[str]:
        """The attn_implementation asked for, before checking what is installed; None = model default."""
        if self.attn_implementation:
            return self.attn_implementation
        if self.flash_attention:
            return "flash_attention_2"
        if self.sdp_attention:
            return "sdpa"
        if self.eager_attention:
            return "eager"
        return None


QAT_DTYPES = {"int4": "int4", "int8": "int8", "float8": "float8", "fp8": "float8", "float8_e4m3fn": "float8",
              "nvfp4": "nvfp4", "mxfp4": "mxfp4"}


class QatOptions(Section):
    """`qat:` quantization-aware training (Axolotl's keys): torchao fake-quantizes the linear layers' weights (and
    activations) in the forward pass, so the weights learn to survive the quantization applied after training."""

    weight_dtype: str = Field("int8", description="The weights' quantization: int4, int8, float8, nvfp4, mxfp4.")
    activation_dtype: Optional[str] = Field(None, description="The activations' quantization (int8, float8, nvfp4, "
                                            "mxfp4), or none.")
    group_size: int = Field(32, ge=1, description="Weights per quantization group (int4/int8 per-group scales).")
    quantize_embedding: bool = Field(False, description="Fake-quantize the input embeddings' weights too.")
    fake_quant_after_n_steps: Optional[int] = Field(
        None, ge=0, description="Train this many steps unquantized first, then turn the fake quantization on.")

    @field_validator("weight_dtype", "activation_dtype")
    @classmethod
    def _dtype(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        if v not in QAT_DTYPES:
            raise ValueError(f"`{v}` is not a QAT data type; valid: {', '.join(sorted(set(QAT_DTYPES)))}")
        return QAT_DTYPES[v]

    @field_validator("activation_dtype")
    @classmethod
    def _activations(cls, v: Optional[str]) -> Optional[str]:
        if v == "int4":
            raise ValueError("int4 activations are not supported; use int8 or float8 activations")
        return v


class QuantizationConfig(Section):
    load_in_8bit: bool = Field(False, description="Load the base model in 8 bits (bitsandbytes LLM.int8).")
    load_in_4bit: bool = Field(False, description="Load the base model in 4 bits (bitsandbytes); use with qlora.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the 4-bit scales too (saves ~0.4 bit/param).")
    bnb_4bit_compute_dtype: Optional[Literal["bfloat16", "float16", "float32"]] = Field(
        None, description="dtype of the 4-bit matmuls; default: the training dtype."
    )
    bnb_4bit_quant_storage: Optional[Literal["bfloat16", "float16", "float32", "uint8"]] = Field(
        None, description="Storage dtype of packed 4-bit weights; set to the training dtype for FSDP + QLoRA."
    )
    llm_int8_threshold: float = Field(6.0, description="Outlier threshold of 8-bit matmuls.")
    llm_int8_skip_modules: Optional[tuple[str, ...]] = Field(
        None, description="Modules to keep unquantized (default: the output head)."
    )
    quantize_moe_experts: bool = Field(
        False, description="Quantize a mixture-of-experts model's routed experts (3-D weights, which bitsandbytes' "
        "loading leaves in 16 bits) to the base's 4 or 8 bits too; they stay frozen.")
    use_onebitllms: bool = Field(
        False, description="BitNet b1.58 training, as Falcon-E's onebitllms does it (Axolotl's key): full fine-tuning in "
        "which every linear layer but the head computes with its weight ternarized (one absmean scale) and its input "
        "in 8 bits per token; the full-precision weights train and are saved (docs/methods.md).")
    fp8: bool = Field(
        False, description="FP8 training (torchao's float8 layers, as Axolotl sets them up through accelerate): full "
        "fine-tuning in which every linear layer but the model's first and last computes in float8 with one scale per "
        "tensor; the weights stay in full precision. Needs torchao (`pip install 'ft[qat]'`).")
    fp8_enable_fsdp_float8_all_gather: bool = Field(
        False, description="Axolotl's: with fp8 under FSDP2, gather the weights in float8. Accepted and said once; ft "
        "gathers them in the training dtype (the matmuls are float8 either way), as float8 gathering did not follow "
        "one process's run (docs/methods.md).")
    qat: Optional[QatOptions] = Field(
        None, description="Quantization-aware training (`qat:` block, Axolotl's keys; torchao, `pip install "
        "'ft[qat]'`): full fine-tuning with the linear layers fake-quantized; the saved model holds the trained "
        "full-precision weights, ready to be quantized.")

    @property
    def bits(self) -> Optional[int]:
        return 4 if self.load_in_4bit else 8 if self.load_in_8bit else None
