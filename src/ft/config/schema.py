"""`FtConfig`: the sections composed, the checks that span sections, and derived values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from ft.config.adapter import AdapterConfig
from ft.config.base import Contradiction
from ft.config.context import context_of
from ft.config.data import DataConfig
from ft.config.diffusion import DiffusionConfig
from ft.config.distillation import DistillationConfig
from ft.config.distributed import DistributedConfig
from ft.config.evaluation import EvaluationConfig
from ft.config.logs import LoggingConfig
from ft.config.model import ModelConfig, QuantizationConfig
from ft.config.online import OnlineConfig
from ft.config.preference import PreferenceConfig
from ft.config.training import TrainingConfig


class FtConfig(BaseModel):
    """The whole validated config. Built once by `ft.config.load_config`, never mutated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)

    @model_validator(mode="after")
    def _no_contradictions(self, info: ValidationInfo) -> "FtConfig":
        for contradiction in contradictions(self):
            raise contradiction
        context = context_of(info)
        if context is not None:
            for contradiction in pair_contradictions(self, context.pair_formats, context.kto_formats):
                raise contradiction
            for contradiction in prompt_contradictions(self, context.format_reads):
                raise contradiction
            rule = context.adapter_rules.get(self.adapter.adapter or "")
            refused = rule(self) if rule is not None else None
            if refused is not None:
                raise Contradiction(*refused)
        return self

    def effective_batch_size(self, world_size: int = 1) -> int:
        """Sequences per optimizer step: micro batch × accumulation × processes (× groups of processes, under
        context parallelism: a group draws one micro batch)."""
        t = self.training
        return t.micro_batch_size * t.gradient_accumulation_steps * max(world_size // (self.distributed.context_parallel_size or 1), 1)

    @property
    def distills(self) -> bool:
        """Whether the run distills: from `teacher_model`, or from the teacher's log-probabilities the rows carry."""
        return self.distillation.on or bool(self.logprobs_datasets)

    @property
    def logprobs_datasets(self) -> list[str]:
        return [ds.path for ds in (*self.data.datasets, *self.data.test_datasets) if ds.logprobs_field]

    @property
    def has_eval_data(self) -> bool:
        return bool(self.data.val_set_size or self.data.test_datasets)

    @property
    def prepared_dir(self) -> Path:
        """Where the prepared-dataset cache lives: dataset_prepared_path, else output_dir/prepared."""
        return Path(self.data.dataset_prepared_path or Path(self.training.output_dir) / "prepared")


DISTILL_SHARDED = ("distillation is not supported with {} yet (the head's weight is whole only inside the forward, and "
                   "the loss runs it a chunk at a time): use DDP or DeepSpeed ZeRO-1/2")


def contradictions(cfg: FtConfig) -> list[Contradiction]:
    """Every pair of settings that cannot hold together, checked before anything is loaded."""
    q, a, m, t, d = cfg.quantization, cfg.adapter, cfg.model, cfg.training, cfg.distributed
    found: list[Contradiction] = []

    def add(key: str, message: str) -> None:
        found.append(Contradiction(key, message))

    if q.load_in_8bit and q.load_in_4bit:
        add("load_in_8bit", "`load_in_8bit` and `load_in_4bit` are both true; keep one (4-bit goes with `adapter: qlora`)")
    elif q.load_in_4bit and a.adapter == "lora":
        add("adapter", "`load_in_4bit` with `adapter: lora`: use `adapter: qlora`")
    elif a.adapter == "qlora" and not q.load_in_4bit:
        fix = "use `adapter: lora` with an 8-bit base" if q.load_in_8bit else "add `load_in_4bit: true`"
        add("adapter", f"`adapter: qlora` trains on a 4-bit base: {fix}")
    elif q.bits and a.adapter is None:
        fix = "adapter: qlora" if q.bits == 4 else "adapter: lora"
        add(f"load_in_{q.bits}bit", f"{'an' if q.bits == 8 else 'a'} {q.bits}-bit base cannot be fully fine-tuned: add `{fix}`")
    if a.peft.loftq_config and (q.bits or a.peft_use_dora or d.fsdp):
        why = (f"a {q.bits}-bit base (LoftQ quantizes the 16-bit weights itself; remove `load_in_{q.bits}bit`)" if q.bits
               else "DoRA (its magnitudes are taken from the weights before LoftQ changes them; remove `peft_use_dora`)"
               if a.peft_use_dora else "FSDP (each process holds a share of every weight; use DDP or DeepSpeed ZeRO-1/2)")
        add("peft", f"LoftQ is not supported with {why}")
    if m.model_quantization_config and q.bits:
        add("model_quantization_config", f"`model_quantization_config` reads the checkpoint back in 16 bits and "
            f"`load_in_{q.bits}bit` quantizes it with bitsandbytes; keep one")
    if m.reinit_weights and q.bits:
        add("reinit_weights", f"`reinit_weights` starts from fresh weights, and `load_in_{q.bits}bit` quantizes a "
            "checkpoint's; keep one")
    if q.quantize_moe_experts and not q.bits:
        add("quantize_moe_experts", "`quantize_moe_experts` stores the experts in the base's bits: set `load_in_4bit` "
            "(with `adapter: qlora`) or `load_in_8bit` (with `adapter: lora`)")
    elif q.quantize_moe_experts and d.fsdp and d.fsdp_config.fsdp_version != 2:
        add("quantize_moe_experts", "`quantize_moe_experts` under FSDP needs FSDP2 (`fsdp_config.fsdp_version: 2`), which "
            "ft loads a share per process with the experts quantized; or use DDP or DeepSpeed ZeRO-1/2")
    if q.fp8 and (a.adapter or q.bits or q.qat or q.use_onebitllms):
        what = (f"`adapter: {a.adapter}`" if a.adapter else f"`load_in_{q.bits}bit`" if q.bits else "`qat`" if q.qat
                else "`use_onebitllms`")
        add("fp8", f"FP8 training (`fp8`) is full fine-tuning of float8 linear layers; remove {what}")
    if q.fp8_enable_fsdp_float8_all_gather and not (q.fp8 and d.fsdp and d.fsdp_config.fsdp_version == 2):
        add("fp8_enable_fsdp_float8_all_gather", "`fp8_enable_fsdp_float8_all_gather` gathers float8 weights under "
            "FSDP2: set `fp8: true` with FSDP2, or remove it")
    if q.use_onebitllms and (a.adapter or q.bits or q.qat):
        what = f"`adapter: {a.adapter}`" if a.adapter else f"`load_in_{q.bits}bit`" if q.bits else "`qat`"
        add("use_onebitllms", f"BitNet training (`use_onebitllms`) trains the full-precision weights it ternarizes (full "
            f"fine-tuning); remove {what}")
    if q.qat and (a.adapter or q.bits):
        add("qat", "quantization-aware training trains the weights it fake-quantizes (full fine-tuning); remove "
            + (f"`adapter: {a.adapter}`" if a.adapter else f"`load_in_{q.bits}bit`") + " or `qat`")
    if q.qat and q.qat.fake_quant_after_n_steps and t.max_steps and q.qat.fake_quant_after_n_steps >= t.max_steps:
        add("qat", f"`fake_quant_after_n_steps: {q.qat.fake_quant_after_n_steps}` is at or after the last step "
            f"(max_steps {t.max_steps}): the fake quantization would never start")
    if a.lora_model_dir and a.adapter is None:
        add("lora_model_dir", "`lora_model_dir` needs `adapter: lora` or `adapter: qlora`")
    if m.bf16 in (True, "full") and m.fp16:
        add("fp16", "`bf16` and `fp16` are both true; keep one")
    if d.dp_shard_size and d.dp_shard_size > 1 and not d.fsdp:
        add("dp_shard_size", f"`dp_shard_size: {d.dp_shard_size}` shards the weights with FSDP: set `fsdp` (e.g. "
            "[full_shard, auto_wrap]) with fsdp_config")
    if d.deepspeed and d.fsdp:
        add("fsdp", "`deepspeed` and `fsdp` are both set; use one of them")
    if d.fsdp and q.load_in_8bit and d.fsdp_config.fsdp_version != 2:
        add("load_in_8bit", "an 8-bit base under FSDP needs FSDP2 (`fsdp_config.fsdp_version: 2`), which holds its "
            "integer weights whole on each process and shards the rest; or use `load_in_4bit: true` with `adapter: qlora`")
    if d.fsdp and q.load_in_4bit and q.bnb_4bit_quant_storage == "uint8":
        add("bnb_4bit_quant_storage", "4-bit weights stored as uint8 are sharded by FSDP as if they were numbers (loss 0 "
            "or NaN, accelerate#3983): remove `bnb_4bit_quant_storage` (under FSDP ft stores them in the training dtype)")
    fsdp1_only = [o for o in d.fsdp if o in ("hybrid_shard", "hybrid_shard_zero2", "no_shard")]
    if fsdp1_only and d.fsdp_config.fsdp_version == 2:
        add("fsdp", f"`fsdp: {fsdp1_only[0]}` needs `fsdp_config.fsdp_version: 1`; FSDP2 shards full_shard or shard_grad_op")
    if d.context_parallel_size and d.context_parallel_size > 1:
        other = ("`rl`" if cfg.preference.rl else "`reward_model`" if cfg.preference.reward_model else "distillation"
                 if cfg.distills else "`diffusion`" if cfg.diffusion.diffusion else "`process_reward_model`"
                 if cfg.preference.process_reward_model else None)
        if other:
            add("context_parallel_size", f"context parallelism splits the sequences of supervised training, and {other} "
                "trains otherwise; remove one of them")
    if a.relora:
        _relora(cfg, add)
    elif t.jagged_restart_steps is None and (t.jagged_restart_warmup_steps or t.jagged_restart_anneal_steps):
        key = "jagged_restart_warmup_steps" if t.jagged_restart_warmup_steps else "jagged_restart_anneal_steps"
        add(key, f"`{key}` shapes each jagged restart: set `jagged_restart_steps` (their period)")
    if t.llmcompressor and (a.adapter or q.bits or d.backend):
        what = (f"`adapter: {a.adapter}` trains a dense update beside them" if a.adapter else
                f"`load_in_{q.bits}bit` freezes them" if q.bits else f"`{d.backend}` updates its own shards of them, "
                "which ft does not mask")
        add("llmcompressor", f"`llmcompressor` keeps a sparse model's zeros as its weights train (full fine-tuning on "
            f"one process or DDP), and {what}; remove one of them")
    if t.save_steps and t.saves_per_epoch:
        add("saves_per_epoch", "`save_steps` and `saves_per_epoch` are both set; keep one")
    if t.save_strategy != "steps" and (t.save_steps or t.saves_per_epoch):
        key = "save_steps" if t.save_steps else "saves_per_epoch"
        add(key, f"`{key}` sets the steps schedule of checkpoints, and `save_strategy: {t.save_strategy}` another; keep one")
    if t.save_strategy == "best" and not cfg.has_eval_data:
        add("save_strategy", "`save_strategy: best` saves at evaluations that improve metric_for_best_model: set "
            "`val_set_size` or `test_datasets`")
    if t.save_strategy in ("no", "epoch") and (t.load_best_model_at_end or t.early_stopping_patience is not None):
        key = "load_best_model_at_end" if t.load_best_model_at_end else "early_stopping_patience"
        add("save_strategy", f"`{key}` needs a checkpoint at every evaluation, and `save_strategy: {t.save_strategy}` "
            "saves " + ("none" if t.save_strategy == "no" else "once an epoch") + "; remove save_strategy")
    if t.save_only_model and d.backend and t.load_best_model_at_end:
        add("save_only_model", f"the Trainer cannot load the best weights-only checkpoint under {d.backend}; remove "
            "`save_only_model` or `load_best_model_at_end`")
    if t.optimizer == "muon" and (a.adapter or d.deepspeed or (d.fsdp and d.fsdp_config.fsdp_version != 2)):
        what = (f"`adapter: {a.adapter}` trains low-rank factors" if a.adapter else "DeepSpeed builds its own optimizer"
                if d.deepspeed else "FSDP1 flattens the weight matrices")
        add("optimizer", f"Muon orthogonalizes whole weight matrices, and {what}: use it for full fine-tuning on one "
            "process, DDP or FSDP2, or choose another optimizer")
    if t.use_eaft and (cfg.preference.rl or cfg.distills or cfg.preference.reward_model):
        what = "EBFT" if cfg.preference.rl == "ebft" else "preference training" if cfg.preference.rl else "distillation" if cfg.distills else "a reward model"
        add("use_eaft", f"EAFT weights the cross-entropy of supervised fine-tuning, which {what} does not train on; "
            "remove `use_eaft`")
    if t.eval_strategy == "no" and (t.eval_steps or t.evals_per_epoch or t.load_best_model_at_end
                                    or t.early_stopping_patience is not None or t.save_strategy == "best"):
        add("eval_strategy", "`eval_strategy: no` never evaluates, and "
            + next(f"`{k}`" for k, on in (("eval_steps", t.eval_steps), ("evals_per_epoch", t.evals_per_epoch),
                                          ("load_best_model_at_end", t.load_best_model_at_end),
                                          ("early_stopping_patience", t.early_stopping_patience is not None),
                                          ("save_strategy", True)) if on)
            + " needs evaluations; keep one")
    if t.eval_strategy == "epoch" and t.eval_steps:
        add("eval_strategy", "`eval_strategy: epoch` evaluates once an epoch and `eval_steps` every N steps; keep one")
    if t.eval_steps and t.evals_per_epoch:
        add("evals_per_epoch", "`eval_steps` and `evals_per_epoch` are both set; keep one")
    if t.warmup_steps is not None and t.warmup_ratio is not None:
        add("warmup_ratio", "`warmup_steps` and `warmup_ratio` are both set; keep one")
    if cfg.data.curriculum_sampling and (cfg.data.sample_packing or t.group_by_length):
        key = "sample_packing" if cfg.data.sample_packing else "group_by_length"
        add(key, f"`curriculum_sampling` trains the rows in their order, and `{key}` reorders them "
            + ("(ft packs best-fit decreasing)" if cfg.data.sample_packing else "by length") + "; keep one")
    if cfg.data.padding_free and t.group_by_length and not cfg.data.sample_packing:
        add("group_by_length", "`group_by_length` groups rows to trim padding, and `padding_free` has none; keep one")
    if t.lisa_n_layers and (a.adapter or a.unfrozen_parameters):
        add("lisa_n_layers", "LISA chooses which whole layers of a full fine-tune train; remove "
            + (f"`adapter: {a.adapter}`" if a.adapter else "`unfrozen_parameters`") + " or the lisa_* keys")
    if t.lisa_n_layers and d.backend:
        add("lisa_n_layers", f"LISA is not supported with {d.backend} yet (it changes which weights train during the run); "
            "train on one process")
    if t.gradient_checkpointing_layers is not None and not t.gradient_checkpointing:
        add("gradient_checkpointing_layers", "`gradient_checkpointing_layers` picks the layers gradient checkpointing "
            "recomputes: turn on `gradient_checkpointing` too")
    elif t.gradient_checkpointing_layers is not None and t.activation_offloading:
        add("gradient_checkpointing_layers", "`activation_offloading` moves every layer's saved activations to the host, "
            "checkpointed or not; keep one of it and `gradient_checkpointing_layers`")
    if t.selective_checkpointing and not t.gradient_checkpointing:
        add("selective_checkpointing", "`selective_checkpointing` chooses what the layers gradient checkpointing "
            "recomputes keep: turn on `gradient_checkpointing` too")
    if t.selective_checkpointing_sliding_window and not t.selective_checkpointing:
        add("selective_checkpointing_sliding_window", "it extends `selective_checkpointing` to the sliding-window "
            "layers: turn on `selective_checkpointing` too")
    if t.grouped_attention_backward and cfg.model.attention_request in ("flash_attention_2", "flash_attention_3"):
        add("grouped_attention_backward", "it splits the backward of ft's varlen attention (torch's flash kernel), and "
            "flash-attn's kernel runs its backward whole: remove `flash_attention` / `attn_implementation`")
    if t.chunked_rms_norm and cfg.model.liger_rms_norm:
        add("chunked_rms_norm", "`chunked_rms_norm` and `liger_rms_norm` both replace the model's norms; keep one")
    if t.activation_offloading and not t.gradient_checkpointing:
        add("activation_offloading", "`activation_offloading` moves the checkpointed layer inputs to CPU memory: "
            "turn on `gradient_checkpointing` too")
    e = cfg.evaluation
    for key, on in (("load_best_model_at_end", t.load_best_model_at_end), ("metric_for_best_model", t.metric_for_best_model),
                    ("do_causal_lm_eval", e.do_causal_lm_eval)):
        if on and not cfg.has_eval_data:
            add(key, f"`{key}` needs evaluation data: set `val_set_size` or `test_datasets`")
    metric = (t.metric_for_best_model or "loss").removeprefix("eval_")
    if metric not in ("loss", "perplexity") and not e.do_causal_lm_eval:
        add("metric_for_best_model", f"`metric_for_best_model: {t.metric_for_best_model}` is a generation metric: set "
            "`do_causal_lm_eval: true` (or pick `loss`)")
    if "bertscore" in e.eval_causal_lm_metrics and not e.bertscore_model:
        add("eval_causal_lm_metrics", "the metric `bertscore` needs `bertscore_model`: a local encoder model folder "
            "(e.g. roberta-large, downloaded), as nothing is fetched from the hub")
    if e.do_causal_lm_eval and d.fsdp:
        add("do_causal_lm_eval", "`do_causal_lm_eval` is not supported with fsdp (the weights are whole only inside the "
            "forward pass); run `ft eval cfg.yml` after training")
    found += distillation_contradictions(cfg)
    if cfg.distills and cfg.preference.rl:
        on = "samples of its own" if cfg.preference.rl == "ebft" else "pairs"
        add("teacher_model", f"distillation trains on single texts and `rl: {cfg.preference.rl}` on {on}; keep one")
    found += online_contradictions(cfg)
    found += step_contradictions(cfg)
    if cfg.diffusion.diffusion is not None:
        other = next((k for k, on in (("rl", cfg.preference.rl), ("reward_model", cfg.preference.reward_model),
                                      ("process_reward_model", cfg.preference.process_reward_model),
                                      ("teacher_model", cfg.distills), ("use_eaft", t.use_eaft)) if on), None)
        if other:
            add(other, f"`{other}` is not supported with diffusion training (`diffusion:`), which has a loss of its own; "
                "keep one")
    if cfg.distills and d.fsdp:
        add("teacher_model", DISTILL_SHARDED.format("fsdp"))
    if t.early_stopping_patience and not cfg.has_eval_data:
        add("early_stopping_patience", "early stopping needs evaluation data: set `val_set_size` or `test_datasets`")
    return found



RELORA_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


def _relora(cfg: Any, add: Any) -> None:
    """ReLoRA merges plain LoRA into the weights it sits on and prunes Adam's moments, on one process or DDP."""
    a, q, t, d = cfg.adapter, cfg.quantization, cfg.training, cfg.distributed
    if a.adapter not in ("lora", "qlora"):
        add("relora", "ReLoRA merges LoRA into the base and starts it again: set `adapter: lora` or `qlora`"
            + (f" (this run has `adapter: {a.adapter}`)" if a.adapter else ""))
    elif not t.jagged_restart_steps:
        add("relora", "ReLoRA restarts every `jagged_restart_steps` steps: set it (e.g. 150)")
    elif d.backend:
        add("relora", f"ReLoRA is not supported with {d.backend} (each restart merges into weights that are whole on "
            "every process); use DDP or one process")
    elif q.bits == 8 or q.quantize_moe_experts or a.lora_target_parameters:
        what = ("an 8-bit base" if q.bits == 8 else "quantized experts" if q.quantize_moe_experts
                else "`lora_target_parameters`")
        add("relora", f"ReLoRA with {what} is not supported yet; use a 16-bit or 4-bit base and linear targets")
    elif a.peft_use_dora or a.peft_init_lora_weights or a.peft.loftq_config or a.lora_model_dir:
        what = ("`peft_use_dora`" if a.peft_use_dora else f"`peft_init_lora_weights: {a.peft_init_lora_weights}`"
                if a.peft_init_lora_weights else "LoftQ" if a.peft.loftq_config else "`lora_model_dir`")
        add("relora", f"ReLoRA restarts plain LoRA from A random and B zero, and {what} starts it otherwise; remove one")
    elif t.optimizer not in RELORA_OPTIMIZERS:
        add("relora", f"ReLoRA prunes Adam's moments at each restart, and `optimizer: {t.optimizer}` has others; use "
            + ", ".join(RELORA_OPTIMIZERS))

def step_contradictions(cfg: FtConfig) -> list[Contradiction]:
    """A process reward model reads `stepwise_supervised` rows, and only it does."""
    prm, found = cfg.preference.process_reward_model, []
    for ds in (*cfg.data.datasets, *cfg.data.test_datasets):
        stepwise = ds.type == "stepwise_supervised"
        if prm and not stepwise:
            found.append(Contradiction("process_reward_model", f"a process reward model trains on `type: "
                                       f"stepwise_supervised` rows, and the dataset `{ds.path}` has `type: {ds.type}`"))
        elif stepwise and not prm:
            found.append(Contradiction("process_reward_model", f"the dataset `{ds.path}` holds labelled reasoning steps "
                                       "(`type: stepwise_supervised`): set `process_reward_model: true` to train on them"))
    if prm:
        for key, on in (("sample_packing", cfg.data.sample_packing), ("use_eaft", cfg.training.use_eaft),
                        ("teacher_model", cfg.distills)):
            if on:
                found.append(Contradiction(key, f"`{key}` is not supported with a process reward model (it classifies each "
                                           f"step of padded rows); remove `{key}`"))
    return found


def prompt_contradictions(cfg: FtConfig, formats: Any) -> list[Contradiction]:
    """`rl: grpo` samples answers to the prompts a Python transform makes (`type: module.function`: a type that is
    none of ft's formats, `formats`), and a Python transform's rows are such prompts."""
    rl = cfg.preference.rl
    grpo = rl in ("grpo", "gdpo")
    for ds in cfg.data.datasets:
        python = isinstance(ds.type, str) and ds.type not in formats
        if grpo and not python:
            shown = f"`type: {ds.type}`" if isinstance(ds.type, str) else "a user-defined type" if ds.type else "no type"
            return [Contradiction("rl", f"`rl: {rl}` samples answers to prompts, which a Python transform makes (`type: "
                                  f"module.function` returning {{prompt, ...}}); the dataset `{ds.path}` has {shown}")]
        if python and not grpo:
            return [Contradiction("datasets", f"the Python transform `{ds.type}` makes prompts, which `rl: grpo` (or "
                                  "gdpo) samples answers to: set it, or use one of ft's formats")]
    return []


SAMPLING_SHARDED = ("`rl: {rl}` is not supported with {backend} yet (it samples token by token from weights that are "
                    "whole only inside each forward); use DDP or DeepSpeed ZeRO-1/2")


def online_contradictions(cfg: FtConfig) -> list[Contradiction]:
    """`rl: ebft`, `grpo`, `gdpo` sample from the model as it trains: their blocks, and what they cannot run with."""
    o, d, found = cfg.online, cfg.distributed, []
    rl = cfg.preference.rl
    ebft, grpo = rl == "ebft", rl in ("grpo", "gdpo")
    if o.ebft is not None and not ebft:
        found.append(Contradiction("ebft", "`ebft:` sets up energy-based fine-tuning: add `rl: ebft`, or remove it"))
    if o.trl is not None and not (ebft or grpo):
        found.append(Contradiction("trl", "`trl:` sets up training on the model's own samples: add `rl: grpo` (or gdpo, "
                                   "ebft), or remove it"))
    if grpo:
        if o.trl is None or not o.trl.reward_funcs:
            found.append(Contradiction("rl", f"`rl: {rl}` scores samples with reward functions: set "
                                       "`trl.reward_funcs` (import paths, e.g. rewards.accuracy_reward)"))
        if cfg.data.sample_packing:
            found.append(Contradiction("sample_packing", f"`rl: {rl}` samples from each prompt by itself; remove `sample_packing`"))
        if d.fsdp:
            found.append(Contradiction("rl", SAMPLING_SHARDED.format(rl=rl, backend="fsdp")))
        return found
    if not ebft:
        return found
    if o.trl is not None and (o.trl.beta or o.trl.reward_funcs):
        key = "beta" if o.trl.beta else "reward_funcs"
        found.append(Contradiction("trl", f"`trl.{key}` is GRPO's; EBFT scores samples by their features, without a "
                                   "reward function or a KL term: remove it"))
    mode = o.ebft.mode if o.ebft else "structured"
    if o.trl is not None and mode == "strided" and o.trl.model_fields_set - {"use_vllm"}:
        found.append(Contradiction("trl", "strided EBFT samples at anchors with `ebft:`'s settings (temperature, "
                                   "generate_max_len, n_samples_per_prompt); `trl:` sets structured mode's: remove it"))
    if cfg.data.sample_packing:
        found.append(Contradiction("sample_packing", "`rl: ebft` samples from each row by itself; remove `sample_packing`"))
    if d.fsdp:
        found.append(Contradiction("rl", SAMPLING_SHARDED.format(rl="ebft", backend="fsdp")))
    return found


def distillation_contradictions(cfg: FtConfig) -> list[Contradiction]:
    """A teacher, or rows carrying its log-probabilities (logprobs_field), and the kd settings that go with them."""
    k, found = cfg.distillation, []
    entries = (*cfg.data.datasets, *cfg.data.test_datasets)
    carried = cfg.logprobs_datasets
    written = k.written()
    if written and not k.teacher_model and not carried:
        found.append(Contradiction(written[0], f"`{written[0]}` shapes distillation from a teacher, and no `teacher_model` "
                                   "is given (nor a dataset `logprobs_field`): add one, or remove the key"))
    for ds in entries:
        if ds.temperature is not None and not ds.logprobs_field:
            found.append(Contradiction("temperature", f"the dataset `{ds.path}` sets `temperature`, which only goes with "
                                       "`logprobs_field`; remove it"))
        elif ds.logprobs_field and (ds.temperature or 1.0) != k.kd_temperature:
            found.append(Contradiction("kd_temperature", f"the log-probabilities of `{ds.path}` were made at temperature "
                                       f"{ds.temperature or 1.0:g}, and kd_temperature is {k.kd_temperature:g}; make them equal"))
    if carried:
        if k.teacher_model:
            found.append(Contradiction("teacher_model", "the rows carry the teacher's log-probabilities (`logprobs_field`) "
                                       "and `teacher_model` is set too; keep one"))
        elif len(carried) != len(entries):
            found.append(Contradiction("logprobs_field", "some datasets carry the teacher's log-probabilities "
                                       "(`logprobs_field`) and some do not; give every dataset one, or none"))
        elif k.kd_top_k is None:
            found.append(Contradiction("kd_top_k", "the rows carry the teacher's top tokens only (`logprobs_field`): set "
                                       "`kd_top_k` to how many of them to use per position"))
    return found


def pair_contradictions(cfg: FtConfig, pair_formats: frozenset[str], kto_formats: frozenset[str] = frozenset()) -> list[Contradiction]:
    """Preference training (`rl:`) and reward models read pairs, supervised training reads single texts: every
    dataset's `type:` must be of the kind the run reads."""
    p, found = cfg.preference, []
    run = f"`rl: {p.rl}`" if p.rl else "`reward_model: true`"
    for ds in (*cfg.data.datasets, *cfg.data.test_datasets):
        pairs = isinstance(ds.type, str) and ds.type in pair_formats
        kto = isinstance(ds.type, str) and ds.type in kto_formats
        if kto != (p.rl == "kto"):
            found.append(Contradiction("rl", f"`rl: kto` trains on rows of one answer and its label, and the dataset "
                                       f"`{ds.path}` has `type: {ds.type}`; give it a KTO type ({', '.join(sorted(kto_formats))})"
                                       if p.rl == "kto" else f"the dataset `{ds.path}` holds KTO rows (`type: {ds.type}`): "
                                       "set `rl: kto`"))
            continue
        if p.trains_pairs and not pairs:
            kinds = ", ".join(sorted(pair_formats - kto_formats))
            found.append(Contradiction("rl" if p.rl else "reward_model", f"{run} trains on pairs of answers, and the "
                                       f"dataset `{ds.path}` has `type: {ds.type}`; give it a preference type ({kinds})"))
        elif pairs and not p.trains_pairs:
            found.append(Contradiction("rl", f"the dataset `{ds.path}` holds preference pairs (`type: {ds.type}`): set "
                                       "`rl: dpo` (or ipo, orpo, simpo) to train on them, or `reward_model: true`"))
    if p.trains_pairs and cfg.data.sample_packing:
        why = ("lays each pair's answers end to end without padding already" if p.rl else
               "reads each answer's score at its last token, on padded rows")
        found.append(Contradiction("sample_packing", f"{run} {why}; remove `sample_packing`"))
    if p.trains_pairs and cfg.evaluation.do_causal_lm_eval:
        found.append(Contradiction("do_causal_lm_eval", f"`do_causal_lm_eval` is not supported with {run} yet; run "
                                   "`ft eval` on an SFT test set after training"))
    return found
