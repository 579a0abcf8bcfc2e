"""`online` section: training on the model's own generations, scored against the rows' answers (`rl: ebft`).

Energy-based fine-tuning (EBFT; Jelassi et al. 2026, arXiv:2603.12248): for each prompt the model samples
several continuations; a frozen copy of the model (the base with its adapter off, or a frozen copy for full
fine-tuning) turns each sampled text and the row's own answer into features (hidden states of chosen layers,
pooled); a sample's reward is 2·a·cos(φ(sample), φ(answer)) − 2·d·mean over the other samples of
φ(sample)·φ(other); the samples' advantages weight their log-probabilities (a policy gradient). Two modes:
structured (prompt → whole answers, GRPO's loss) and strided (short rollouts at anchors spread through each
text, all in one forward). Key names are Axolotl's (`ebft:`, and `trl:` for the generation of structured mode).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ft.config.base import Contradiction, Section

# trl: keys of Axolotl's vLLM server and its asynchronous pipeline: ft samples with the trained model in the
# training process, synchronously (always on-policy), so these change nothing it computes.
VLLM_KEYS = ("vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_lora_sync", "vllm_sync_interval",
             "vllm_mode", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_enable_sleep_mode",
             "use_data_producer", "async_prefetch", "streaming_partial_batch", "vllm_importance_sampling_correction")


class EbftSettings(Section):
    """Axolotl's `ebft:` block."""

    mode: Literal["structured", "strided"] = Field(
        "structured", description="structured: whole answers sampled for each row's prompt (the part before its first "
        "trained token); strided: short rollouts at anchors spread through each text, one forward for all of them.")
    feature_layers: tuple[float, ...] = Field(
        (0.25, 0.5, 0.75), description="The layers whose hidden states are the features, as shares of the depth (0.5: "
        "the output of the middle layer).")
    embed_method: Literal["last_token", "mean_pooling", "completion_mean", "concat"] = Field(
        "last_token", description="How a text's per-token features become one vector: the last token's, the mean "
        "over the text, the mean over the answer (structured), or the states at 1/4, 1/2 and 3/4 of it (structured).")
    use_whitening: bool = Field(False, description="Whiten the features by the SVD of each prompt's samples (the "
                                "same transform applied to the answer's) before the rewards.")
    alignment_coef: float = Field(1.0, ge=0, description="a: weight of the cosine with the answer's features.")
    diversity_coef: float = Field(1.0, ge=0, description="d: weight of the mean similarity to the other samples.")
    ce_coef: float = Field(0.0, ge=0, description="Weight of the cross-entropy on the rows' answers added to the loss.")
    rl_coef: float = Field(1.0, ge=0, description="strided: weight of the policy-gradient loss.")
    adaptive_max_tokens: bool = Field(
        True, description="structured: sample at most gt_length_multiplier × the answer's tokens (and at most "
        "trl.max_completion_length).")
    gt_length_multiplier: float = Field(1.5, ge=0.1, description="structured, with adaptive_max_tokens: see there.")
    stride: int = Field(8, ge=1, description="strided: tokens between anchors.")
    context_length: int = Field(8, ge=1, description="strided: the first anchor's position in a text without a prompt.")
    generate_max_len: int = Field(8, ge=1, description="strided: tokens sampled at each anchor.")
    n_samples_per_prompt: int = Field(4, ge=1, description="strided: rollouts per text.")
    temperature: float = Field(0.6, ge=0, description="strided: sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="strided: nucleus sampling threshold.")
    advantage_estimator: Literal["rloo", "group_norm", "reinforce"] = Field(
        "rloo", description="strided: reward minus the mean of the other samples' (rloo), the reward standardized over "
        "the samples (group_norm), or the reward itself (reinforce).")
    min_completion_prefix: int = Field(0, ge=0, description="strided, rows with a prompt: anchors start this many "
                                       "tokens into the answer.")

    @field_validator("feature_layers")
    @classmethod
    def _shares(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("give shares of the model's depth in (0, 1], e.g. [0.25, 0.5, 0.75]")
        return v

    @model_validator(mode="after")
    def _strided_pooling(self) -> "EbftSettings":
        if self.mode == "strided" and self.embed_method not in ("last_token", "mean_pooling"):
            raise Contradiction("embed_method", f"strided mode pools each rollout by `last_token` or `mean_pooling`, not "
                                f"`{self.embed_method}`")
        return self


class GenerationKwargs(Section):
    stop_token_ids: tuple[int, ...] = Field((), description="Token ids that end a sample besides the tokenizer's EOS.")


class TrlSettings(Section):
    """Axolotl's `trl:` block: TRL's GRPO settings, read by `rl: grpo`/`gdpo` and structured EBFT."""

    reward_funcs: tuple[str, ...] = Field(
        (), description="`rl: grpo`: the reward functions, as import paths of Python functions (`rewards.accuracy`: "
        "rewards.py in the directory ft runs in), each called as TRL calls it: f(prompts=, completions=, "
        "**the row's other columns) → a number per completion (None: no reward).")
    reward_weights: Optional[tuple[float, ...]] = Field(
        None, description="`rl: grpo`: a weight per reward function (default 1 each).")
    multi_objective_aggregation: Optional[Literal["sum_then_normalize", "normalize_then_sum"]] = Field(
        None, description="`rl: grpo`: sum_then_normalize (GRPO: the weighted rewards summed, then normalized in each "
        "prompt's group), normalize_then_sum (GDPO: each reward normalized in its group, the weighted sum normalized "
        "over the batch). Default: GRPO's for `rl: grpo`, GDPO's for `rl: gdpo`.")
    log_completions: bool = Field(False, description="`rl: grpo`: print some samples with their rewards at each logged step.")
    num_completions_to_print: Optional[int] = Field(None, ge=1, description="How many samples log_completions prints (default all of a step's).")

    num_generations: int = Field(8, ge=2, description="Samples per prompt (TRL's default 8).")
    max_completion_length: int = Field(256, ge=1, description="The most tokens a sample has.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: Optional[int] = Field(None, ge=1, description="Sample among the k most likely tokens only.")
    scale_rewards: bool = Field(True, description="Divide each prompt's advantages by its rewards' standard deviation.")
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = Field(
        "grpo", description="grpo: each sample's token losses averaged, then the samples'; dapo: averaged over all "
        "sampled tokens; dr_grpo: summed and divided by samples × max_completion_length.")
    epsilon: float = Field(0.2, gt=0, description="The clip of the probability ratio (1 on the step that samples).")
    epsilon_high: Optional[float] = Field(None, gt=0, description="The upper clip, when it differs from epsilon.")
    beta: float = Field(0.0, ge=0, description="`rl: grpo`: the weight of the KL term against the reference (the model "
                        "with its adapter off, or a frozen copy); EBFT: 0 only. TRL's default 0.")
    num_iterations: int = Field(1, description="Steps per batch of samples: 1 only.")
    use_vllm: bool = Field(False, description="Axolotl samples with a vLLM server; ft always samples with the trained "
                           "model in the training process (said once when set).")
    generation_kwargs: Optional[GenerationKwargs] = Field(None, description="stop_token_ids: ids that end a sample.")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(
        None, description="Arguments of the chat template when prompts are rendered (e.g. enable_thinking: false); "
        "given to every dataset that sets none of its own.")
    skip_zero_advantage_batches: bool = Field(False, description="Accepted: a batch whose advantages are all zero "
                                              "gives a zero loss either way.")
    vllm_server_host: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_server_port: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_server_timeout: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_lora_sync: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_sync_interval: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_mode: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_gpu_memory_utilization: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_tensor_parallel_size: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_enable_sleep_mode: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    vllm_importance_sampling_correction: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    use_data_producer: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    async_prefetch: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")
    streaming_partial_batch: Any = Field(None, description="Axolotl's vLLM server or asynchronous sampling: accepted and ignored (ft samples in the training process).")

    @model_validator(mode="after")
    def _what_ft_computes(self) -> "TrlSettings":
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise Contradiction("reward_weights", f"{len(self.reward_weights)} weights for {len(self.reward_funcs)} reward "
                                "functions: give one weight per function")
        if self.num_iterations != 1:
            raise Contradiction("num_iterations", "ft takes one step per batch of samples: `num_iterations: 1`")
        return self

    def server_keys(self) -> list[str]:
        """The vLLM and asynchronous-pipeline keys set: they change nothing ft computes."""
        return [k for k in VLLM_KEYS if getattr(self, k) not in (None, False)]


class OnlineConfig(Section):
    ebft: Optional[EbftSettings] = Field(None, description="`rl: ebft`: the feature-matching settings (Axolotl's "
                                         "`ebft:` block; see docs/ebft.md).")
    trl: Optional[TrlSettings] = Field(None, description="`rl: grpo`, `gdpo` and structured `rl: ebft`: how samples "
                                       "are generated, rewarded and trained on (Axolotl's `trl:` block).")
