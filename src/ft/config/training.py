"""`training` section: batches, optimizer, schedule, evaluation, checkpoints."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ft.config.base import Contradiction, Section
from ft.config.context import canonical
from ft.config.sparsity import LlmCompressor


# the attention types (transformers' `layer_types`) of layers whose attention spans a window of keys: they
# recompute it under selective_checkpointing unless selective_checkpointing_sliding_window
SLIDING_LAYER_TYPES = ("sliding_attention", "chunked_attention")


GROUPED_BACKWARD_MOST_CALLS = 8  # grouped_attention_backward: an eighth of the kernel's workspace; more calls only add launches


def grouped_backward_calls(kv_heads: int) -> int:
    """The kernel calls of an attention layer's backward under grouped_attention_backward (ft.model.attention_backward):
    the largest divisor of the key/value heads up to GROUPED_BACKWARD_MOST_CALLS, each call one group's heads."""
    return max(n for n in range(1, GROUPED_BACKWARD_MOST_CALLS + 1) if kv_heads % n == 0)


class GradientAccumulationSettings(Section):
    sync_each_batch: bool = Field(
        False, description="Reduce the gradients across processes after every micro batch instead of once a step: the "
        "same gradients, less memory under FSDP, more communication.")


# accelerate's settings that deal the batches to processes: ft lays its batches out itself
BATCH_DEALING = ("split_batches", "dispatch_batches", "even_batches", "use_seedable_sampler", "use_configured_state")


class AcceleratorSettings(Section):
    """`accelerator_config:` (Axolotl's, handed to the Trainer's accelerate settings)."""

    gradient_accumulation_kwargs: Optional[GradientAccumulationSettings] = Field(None, description="sync_each_batch.")
    non_blocking: bool = Field(False, description="Copy batches to the GPU without waiting (with pinned memory).")
    split_batches: Any = Field(None, description="accelerate's batch dealing: refused (ft lays its batches out itself).")
    dispatch_batches: Any = Field(None, description="accelerate's batch dealing: refused (ft lays its batches out itself).")
    even_batches: Any = Field(None, description="accelerate's batch dealing: refused (ft lays its batches out itself).")
    use_seedable_sampler: Any = Field(None, description="accelerate's batch dealing: refused (ft lays its batches out itself).")
    use_configured_state: Any = Field(None, description="accelerate's batch dealing: refused (ft lays its batches out itself).")

    @model_validator(mode="after")
    def _batches_are_fts(self) -> "AcceleratorSettings":
        for key in BATCH_DEALING:
            if getattr(self, key) is not None:
                raise Contradiction(key, f"`accelerator_config.{key}` changes how batches are dealt to the processes, "
                                    "which ft lays out itself; remove it")
        return self

    def trainer_value(self) -> dict[str, Any]:
        out: dict[str, Any] = {"non_blocking": self.non_blocking}
        if self.gradient_accumulation_kwargs is not None:
            out["gradient_accumulation_kwargs"] = self.gradient_accumulation_kwargs.model_dump()
        return out


class TrainingConfig(Section):
    output_dir: str = Field("./outputs", description="Where checkpoints, the adapter or model, and logs go.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per device per forward pass.")
    eval_batch_size: Optional[int] = Field(None, ge=1, description="Sequences per device when evaluating (default: micro_batch_size).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches per optimizer step.")
    fill_micro_batch: bool = Field(
        False, description="On a GPU, at the start: the most rows (packed bins) per micro batch whose `ft plan` fits the "
        "free memory, gradient_accumulation_steps lowered by the same factor (micro_batch_size × "
        "gradient_accumulation_steps kept: the same rows per optimizer step and the same gradients, in fewer, fuller "
        "kernel calls); the sizes as written without a GPU.")
    batch_size: Optional[int] = Field(
        None, ge=1, description="Axolotl's rows per optimizer step on each process: sets gradient_accumulation_steps "
        "to batch_size / micro_batch_size when that is not written.")
    num_epochs: float = Field(1, gt=0, description="Passes over the training data.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (wins over num_epochs).")
    optimizer: str = Field("adamw_torch", description="Optimizer name; see the optimizer list in the docs.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    accelerator_config: Optional[AcceleratorSettings] = Field(
        None, description="accelerate's settings for the Trainer: gradient_accumulation_kwargs.sync_each_batch, "
        "non_blocking (Axolotl's key).")
    llmcompressor: Optional[LlmCompressor] = Field(
        None, description="Fine-tune a sparse model keeping its zeros (LLM Compressor's recipe: its "
        "ConstantPruningModifier targets, start, end); full fine-tuning.")
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule after warmup.")
    jagged_restart_steps: Optional[int] = Field(
        None, ge=2, description="Jagged restarts (with ReLoRA its restart period): every this many steps the learning "
        "rate warms up again from near 0, over the schedule's own value.")
    jagged_restart_warmup_steps: Optional[int] = Field(
        None, ge=1, description="Jagged restarts: the warmup after each restart (default 10).")
    jagged_restart_anneal_steps: Optional[int] = Field(
        None, ge=1, description="Jagged restarts: the steps before each restart over which the rate falls to near 0 "
        "(default 1).")
    cosine_min_lr_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="With the cosine schedule: decay to this share of learning_rate instead of 0 "
        "(Axolotl's key; transformers' cosine_with_min_lr).")
    cosine_constant_lr_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="With cosine_min_lr_ratio: the cosine reaches its floor at this share of the "
        "steps and the rate stays there after (Axolotl's key; Gupta et al.'s re-warming schedule).")
    lr_quadratic_warmup: bool = Field(
        False, description="With the cosine schedule: warm up along (step / warmup)² instead of linearly (Axolotl's key).")
    warmup_steps: Optional[int] = Field(None, ge=0, description="Linear warmup steps.")
    warmup_ratio: Optional[float] = Field(None, ge=0, lt=1, description="Warmup as a share of all steps.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    adam_beta1: Optional[float] = Field(None, gt=0, lt=1, description="Adam beta1 (default 0.9).")
    adam_beta2: Optional[float] = Field(None, gt=0, lt=1, description="Adam beta2 (default 0.999).")
    adam_epsilon: Optional[float] = Field(None, gt=0, description="Adam epsilon (default 1e-8).")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, ~30% more compute."
    )
    gradient_checkpointing_layers: Optional[Union[int, Literal["auto"]]] = Field(
        None, description="With gradient_checkpointing: recompute only the first N decoder layers and keep the "
        "others' activations: fewer recomputed layers (faster steps) where memory allows some (`ft plan` counts it). "
        "`auto`: the fewest that fit the GPU's free memory by ft plan's count, chosen at the start (every layer "
        "without a GPU).")
    selective_checkpointing: bool = Field(
        False, description="With gradient_checkpointing: each recomputed layer keeps its attention output (and the "
        "softmax statistics its backward reads), so the backward pass recomputes the projections, norms and MLP but "
        "not attention, the part that grows with the square of the row length: one hidden-state-sized tensor more per "
        "layer (`ft plan` counts it) for most of checkpointing's extra compute at long context. Attention a model "
        "computes itself (eager, Gemma-2's soft-capping) is recomputed as before. Axolotl's `selective_checkpointing: "
        "{save: [attention]}` reads as true.")
    selective_checkpointing_sliding_window: bool = Field(
        False, description="With selective_checkpointing: the sliding-window layers of a hybrid model (its config's "
        "layer_types) keep their attention outputs too; without it they recompute them (a window's keys per token: "
        "cheap). Axolotl's `selective_checkpointing: {save_sliding_window: true}`.")
    eval_strategy: Optional[Literal["steps", "epoch", "no"]] = Field(
        None, description="`no`: never evaluate during training (the held-out rows stay held out); `epoch`: once an "
        "epoch unless evals_per_epoch says more often; `steps` (the default): as eval_steps or evals_per_epoch say.")
    eval_steps: Optional[float] = Field(None, gt=0, description="Evaluate every N steps (or a fraction of the run).")
    evals_per_epoch: Optional[int] = Field(None, ge=1, description="Evaluate this many times per epoch.")
    save_steps: Optional[float] = Field(None, gt=0, description="Save a checkpoint every N steps (or a fraction of the run).")
    saves_per_epoch: Optional[int] = Field(None, ge=1, description="Save this many checkpoints per epoch.")
    save_total_limit: Optional[int] = Field(None, ge=1, description="Keep at most this many checkpoints.")
    save_strategy: Literal["steps", "epoch", "best", "no"] = Field(
        "steps", description="When checkpoints are saved (the Trainer's and Axolotl's key): steps (every save_steps, "
        "saves_per_epoch times an epoch, else once an epoch), epoch, best (at an evaluation that improves "
        "metric_for_best_model), no (only the final model).")
    save_only_model: bool = Field(
        False, description="Checkpoints hold the weights only, no optimizer state: smaller, and a run resumed from "
        "one starts its optimizer and schedule again (said when it does).")
    resume_from_checkpoint: Optional[str] = Field(None, description="A checkpoint folder to resume from.")
    auto_resume_from_checkpoints: bool = Field(
        True, description="Resume from the newest complete checkpoint in output_dir when there is one."
    )
    lisa_n_layers: Optional[int] = Field(
        None, ge=1, description="LISA (Pan et al., 2024; Axolotl's keys): full fine-tuning where only this many decoder "
        "layers, drawn at random every lisa_step_interval steps, train; embeddings and head train throughout.")
    lisa_step_interval: int = Field(20, ge=1, description="LISA: steps between two draws of the layers that train.")
    lisa_layers_attribute: str = Field("model.layers", description="LISA: the path of the model's list of decoder "
                                       "layers.")
    loss_watchdog_threshold: Optional[float] = Field(
        None, gt=0, description="Stop the run with an error when the training loss stays above this value for "
        "loss_watchdog_patience logged steps in a row (Axolotl's key).")
    loss_watchdog_patience: int = Field(3, ge=1, description="Logged steps in a row above loss_watchdog_threshold that stop the run.")
    early_stopping_patience: Optional[int] = Field(
        None, ge=1, description="Stop after this many evaluations without a better eval loss."
    )
    metric_for_best_model: Optional[str] = Field(
        None, description="The evaluation metric that picks the best checkpoint: loss, or a generation metric "
        "(exact_match, f1, bleu, chrf, rouge1, ... with do_causal_lm_eval); `eval_` may be written or not.",
    )
    greater_is_better: Optional[bool] = Field(None, description="Whether a larger metric is better (default: not for loss).")
    load_best_model_at_end: bool = Field(
        False, description="End with the best checkpoint's weights; that checkpoint is never rotated away.")
    neftune_noise_alpha: Optional[float] = Field(None, gt=0, description="NEFTune embedding noise.")
    group_by_length: bool = Field(False, description="Batch rows of similar length together (less padding).")
    seed: int = Field(42, description="Seed for shuffling, splits and initialisation.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    torch_compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = Field(
        None, description="torch.compile's mode; setting it compiles the model (torch_compile: true).")
    chunked_cross_entropy: bool = Field(
        True,
        description="Take the training loss a chunk of positions at a time from the final hidden states, never "
        "building the sequence × vocabulary logits (same value and gradients as the plain loss).",
    )
    use_eaft: bool = Field(
        False, description="Entropy-aware focal training (Axolotl's EAFT): each trained token's cross-entropy weighted by "
        "the entropy of the model's top-k next-token distribution there (no gradient through the weight), raised to "
        "eaft_alpha: confident positions count less.")
    eaft_alpha: float = Field(1.0, ge=0, description="With use_eaft: the exponent on the entropy weight (0: the plain loss).")
    eaft_k: int = Field(20, ge=1, description="With use_eaft: how many of the largest logits the entropy is taken over.")
    tiled_mlp: bool = Field(
        False,
        description="Run each layer's MLP over the sequence a tile of tokens at a time, recomputing its wide "
        "intermediate per tile in the backward pass: less memory for long sequences, one more MLP forward.",
    )
    tiled_mlp_tokens: int = Field(8192, ge=1, description="Tokens per MLP tile (with tiled_mlp).")
    chunked_rms_norm: bool = Field(
        False,
        description="Every RMSNorm by ft's own function: it keeps its input as it is for the backward pass (the "
        "model's own norm keeps an fp32 copy) and works a chunk of tokens at a time; the same results, less memory "
        "for long sequences (2 GiB per norm at 131,072 tokens of an 8B model), on any device.",
    )
    grouped_attention_backward: bool = Field(
        False,
        description="Run each attention layer's backward pass a few key/value heads at a time (at most 8 calls): the "
        "flash kernel's fp32 query-gradient accumulator and per-query-head key/value gradients are a group's, not the "
        "layer's (3.5 GiB less at 131,072 tokens of an 8B model); the same gradients, for one more attention forward "
        "per layer. Through ft's varlen attention (not flash-attn's).",
    )
    activation_offloading: bool = Field(
        False,
        description="Keep what the backward pass needs (with gradient_checkpointing: each layer's input) in pinned "
        "CPU memory, copied on a side stream: much longer sequences for a little more step time.",
    )

    @field_validator("optimizer")
    @classmethod
    def _registered_optimizer(cls, v: str, info: ValidationInfo) -> str:
        return canonical(info, "optimizers", v)

    @field_validator("lr_scheduler")
    @classmethod
    def _registered_scheduler(cls, v: str, info: ValidationInfo) -> str:
        return canonical(info, "schedulers", v)

    @model_validator(mode="before")
    @classmethod
    def _accumulation_from_batch_size(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("batch_size"), int) or isinstance(data["batch_size"], bool):
            return data
        micro = data.get("micro_batch_size", 1)
        if not isinstance(micro, int) or micro < 1:
            return data  # the field's own check says what is wrong
        size = data["batch_size"]
        if size % micro:
            raise Contradiction("batch_size", f"{size} is not a multiple of `micro_batch_size: {micro}`")
        if "gradient_accumulation_steps" not in data:
            return {**data, "gradient_accumulation_steps": size // micro}
        if data["gradient_accumulation_steps"] * micro != size:
            raise Contradiction("batch_size", f"{size} is not micro_batch_size × gradient_accumulation_steps "
                                f"({micro} × {data['gradient_accumulation_steps']}); keep one of them")
        return data

    @model_validator(mode="before")
    @classmethod
    def _selective_from_axolotl(cls, data: Any) -> Any:
        """Axolotl's `selective_checkpointing:` as a mapping (save, save_sliding_window, recompute_layer_types,
        offload) read as ft's two keys; what ft does not do is said with its fix."""
        if not isinstance(data, dict) or not isinstance(data.get("selective_checkpointing"), dict):
            return data
        given = dict(data["selective_checkpointing"])
        unknown = sorted(set(given) - {"save", "save_sliding_window", "recompute_layer_types", "offload"})
        if unknown:
            raise Contradiction("selective_checkpointing", f"`{unknown[0]}` is not a setting of it; it takes save, "
                                "save_sliding_window, recompute_layer_types and offload")
        saved = given.get("save") or ["attention"]
        other = [s for s in (saved if isinstance(saved, list) else [saved]) if "attention" not in str(s) and "attn" not in str(s)]
        if other:
            raise Contradiction("selective_checkpointing", f"saving the outputs of `{other[0]}` is not supported by ft "
                                "yet: ft keeps the attention outputs only; set `save: [attention]`")
        if given.get("offload"):
            raise Contradiction("selective_checkpointing", "`offload: true` is not supported by ft yet: the kept "
                                "attention outputs stay on the GPU; remove it (activation_offloading moves the layer inputs)")
        types = given.get("recompute_layer_types")
        sliding = bool(given.get("save_sliding_window"))
        if types is not None:
            if not isinstance(types, list) or not set(map(str, types)) <= set(SLIDING_LAYER_TYPES):
                raise Contradiction("selective_checkpointing", "`recompute_layer_types` takes sliding_attention and "
                                    "chunked_attention: the layers that recompute their attention")
            sliding = sliding or not types
        out = {**data, "selective_checkpointing": True}
        if sliding:
            out["selective_checkpointing_sliding_window"] = True
        return out

    @model_validator(mode="after")
    def _cosine_floor_needs_cosine(self) -> "TrainingConfig":
        if self.cosine_min_lr_ratio is not None and self.lr_scheduler not in ("cosine", "cosine_with_min_lr"):
            raise Contradiction("cosine_min_lr_ratio", f"it shapes the cosine schedule and does nothing with "
                             f"`lr_scheduler: {self.lr_scheduler}`: set `lr_scheduler: cosine` or remove it")
        if self.lr_quadratic_warmup and self.lr_scheduler not in ("cosine", "cosine_with_min_lr"):
            raise Contradiction("lr_quadratic_warmup", f"the quadratic warmup goes with the cosine schedule, not "
                                f"`lr_scheduler: {self.lr_scheduler}`: set `lr_scheduler: cosine` or remove it")
        if self.cosine_constant_lr_ratio is not None and self.cosine_min_lr_ratio is None:
            raise Contradiction("cosine_constant_lr_ratio", "it holds the cosine's floor from that share of the steps "
                                "on: set `cosine_min_lr_ratio` (the floor) too")
        return self

    @field_validator("gradient_checkpointing_layers")
    @classmethod
    def _layers_count(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("a number of layers is 0 or more (or `auto`)")
        return v

    @field_validator("jagged_restart_steps", "jagged_restart_warmup_steps", "jagged_restart_anneal_steps", mode="before")
    @classmethod
    def _false_is_unset(cls, v: Any) -> Any:
        return None if v is False else v  # Axolotl's `jagged_restart_anneal_steps: false`

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _false_means_none(cls, v: Any) -> Any:
        return None if v is False else v
