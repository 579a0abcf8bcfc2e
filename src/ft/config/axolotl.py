"""Axolotl's configuration vocabulary, each key given one of ft's answers.

Axolotl's key names are facts read from its schema (axolotl-ai-cloud/axolotl, src/axolotl/utils/schemas and
each integration's args.py, July 2026). A key that ft's own schema has is implemented there (config/*.py) and
is not listed here. Every other Axolotl key gets one answer:
- mapped: set to a value, it becomes ft's equivalent key (said once when the config loads);
- no-op: left empty, set to what ft does anyway, or a setting that changes nothing ft computes (a speed kernel,
  a logging service, a loader knob): accepted, and `ft validate` lists it as ignored;
- refused: set to anything else, one sentence naming the Axolotl feature ft does not offer yet (exit 2),
  never a did-you-mean.
A key in neither vocabulary stays an unknown key with a did-you-mean (config/load.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

MAPPED, NOOP, REFUSED = "mapped", "no-op", "refused"


@dataclass(frozen=True)
class Answer:
    kind: str  # MAPPED, NOOP or REFUSED (when set to a value that is not empty and not in `same`)
    feature: str  # the Axolotl feature, in words
    same: tuple[Any, ...] = ()  # values that are what ft does anyway (no-op)
    to: Optional[Callable[[Any], dict[str, Any]]] = None  # MAPPED: the value → ft's keys and values
    why: str = ""  # NOOP: why it changes nothing in ft


def _refused(feature: str, *same: Any) -> Answer:
    return Answer(REFUSED, feature, same)


def _noop(feature: str, why: str, *same: Any) -> Answer:
    return Answer(NOOP, feature, same, why=why)


def _to(key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {key: value}


def _when_true(key: str, value: Any) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {key: value} if v else {}


# Keys of an Axolotl `pretraining_dataset:` entry, read as ft's completion dataset keys (text_column → field).
PRETRAINING_KEYS = {"path": "path", "name": "name", "split": "split", "data_files": "data_files", "ds_type": "ds_type",
                    "revision": "revision", "text_column": "field", "field": "field"}


def pretraining_datasets(value: Any) -> dict[str, Any]:
    """Axolotl's `pretraining_dataset:` (streamed raw text) as ft's `datasets:` of `type: completion`: the same texts,
    each trained whole and split at sequence_len, prepared once instead of streamed."""
    out = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path"):
            raise ValueError("each `pretraining_dataset` entry needs a `path`")
        if entry.get("type") not in (None, "pretrain", "completion"):
            raise ValueError(f"Axolotl's `pretraining_dataset` of `type: {entry['type']}` is not supported by ft yet; "
                             "use `type: pretrain` (raw text)")
        extra = sorted(k for k, v in entry.items() if k not in PRETRAINING_KEYS and k != "type" and not (
            k == "trust_remote_code" and not v) and v not in (None, "", [], {}))
        if extra:
            raise ValueError(f"Axolotl's `pretraining_dataset` key `{extra[0]}` is not supported by ft yet; remove it")
        mapped = {PRETRAINING_KEYS[k]: v for k, v in entry.items() if k in PRETRAINING_KEYS and v is not None}
        out.append({**mapped, "type": "completion"})
    return {"datasets": out}


KERNEL = "a speed kernel: ft runs the model's own layers, with the same results"
LOGGER = "ft logs to metrics.jsonl, tensorboard and loss.png"
LOADER = "ft lays out its own batches and data loading"
LAUNCHER = "set by the launcher (accelerate, torchrun) for each process"
STATS = "statistics Axolotl caches; ft computes its own"

# Groups of keys by their first words: (prefix, answer); the first prefix that matches answers a key that the
# explicit table below does not name.
GROUPS: tuple[tuple[str, Answer], ...] = (
    ("mlflow_", _noop("MLflow logging", LOGGER)),
    ("hf_mlflow_", _noop("MLflow logging", LOGGER)),
    ("comet_", _noop("Comet logging", LOGGER)),
    ("trackio_", _noop("Trackio logging", LOGGER)),
    ("otel_", _noop("OpenTelemetry metrics", LOGGER)),
    ("swanlab_", _noop("SwanLab logging", LOGGER)),
    ("gradio_", _noop("the Gradio demo", "ft inference answers prompts from the command line")),
    ("liger_", _noop("Liger kernels", KERNEL, False)),
    ("lora_", _noop("Axolotl's LoRA kernels", KERNEL, False)),  # lora_mlp_kernel, lora_qkv_kernel, ...
    ("flash_attn_", _noop("flash-attn's fused extras", KERNEL, False)),
    ("sample_packing_", _noop("Axolotl's packing settings", "ft packs best-fit decreasing into bins of sequence_len")),
    ("dataloader_", _noop("data loader settings", LOADER)),
    ("ddp_", _noop("DDP settings", "ft sets DDP up itself (no search for unused weights under LoRA)")),
    ("kd_", _refused("this setting of Axolotl's kd plugin (ft distills from `teacher_model`)")),
    ("qgalore_", _refused("Q-GaLore")),
    ("dion_", _refused("the Dion optimizer")),
    ("grokfast_", _refused("Grokfast")),
    ("spectrum_", _refused("Spectrum (layer selection by signal-to-noise)")),
    ("nemo_gym", _refused("NeMo Gym environments")),
    ("expert_parallel", _refused("expert parallelism")),
    ("moe_", _refused("Axolotl's mixture-of-experts kernels")),
    ("dsv4_", _refused("DeepSeek-V4 kernels")),
    ("gemma4_", _refused("Gemma 4 expert quantization")),
    ("nvfp4_", _refused("NVFP4 training")),
    ("eaft_", _refused("EAFT")),
    ("pose_", _refused("PoSE context extension")),
    ("scaling_softmax", _refused("scaled softmax")),
    ("generation_", _refused("Axolotl's sample generation during training")),
    ("lm_eval_", _refused("lm-eval on another model than the run's (ft eval --base-only or --merged choose)")),
    ("dpo_", _refused("this DPO setting")),
    ("ray_", _noop("Ray's settings", "read with `use_ray: true` only")),
    ("torch_compile_", _refused("this torch.compile setting")),
    ("profiler_", _refused("the torch profiler")),
    ("hub_", _refused("pushing to the Hugging Face Hub")),
    ("peft_", _refused("this PEFT setting")),
    ("tiled_mlp_", _refused("this tiled-MLP setting (ft tiles by tiled_mlp_tokens)")),
    ("use_", _refused("this Axolotl integration", False)),
)

KEYS: dict[str, Answer] = {
    # mapped onto ft's own keys
    "cut_cross_entropy": Answer(MAPPED, "Cut Cross-Entropy", (False,), _when_true("chunked_cross_entropy", True)),
    "liger_fused_linear_cross_entropy": Answer(MAPPED, "Liger's fused linear cross-entropy", (False,),
                                               _when_true("chunked_cross_entropy", True)),
    **{f"lora_{part}_kernel": Answer(MAPPED, "Axolotl's LoRA kernels", (False,), _when_true("lora_fused", True))
       for part in ("mlp", "qkv", "o")},  # ft's fused update (lora_fused, on by default) covers every linear layer
    "liger_swiglu": Answer(MAPPED, "Liger's SwiGLU (its old name)", (False,), _when_true("liger_glu_activation", True)),
    "liger_cross_entropy": Answer(MAPPED, "Liger's cross-entropy", (False,), _when_true("chunked_cross_entropy", True)),
    "dpo_beta": Answer(MAPPED, "DPO's beta (Axolotl's old name)", (), _to("rl_beta")),
    "fsdp_version": Answer(MAPPED, "the FSDP version", (), lambda v: {"fsdp_config": {"fsdp_version": v}}),
    "bfloat16": Answer(MAPPED, "bf16 weights", (False,), _when_true("bf16", "full")),
    "float16": Answer(MAPPED, "fp16 weights", (False,), _when_true("fp16", True)),
    "gradient_checkpointing_kwargs": _noop("gradient checkpointing arguments", "ft checkpoints without reentrance, "
                                           "which computes the same gradients as reentrant checkpointing"),
    # accepted as no-ops
    "save_safetensors": _noop("safetensors checkpoints", "ft always saves safetensors", True),
    "xformers_attention": _noop("xformers attention", "ft runs sdpa or flash attention", False),
    "flash_optimum": _noop("Optimum's BetterTransformer", "ft runs sdpa or flash attention", False),
    "sdpa_varlen": _noop("sdpa over packed rows", "ft's packed batches run varlen attention already", True),
    "batch_flattening": _noop("batch flattening", "ft's unpacked batches are padding-free on a GPU already", True),
    "remove_unused_columns": _noop("the Trainer's column pruning", "ft builds only the columns it trains on"),
    "tokenizer_legacy": _noop("the tokenizer's legacy mode", "ft loads the tokenizer as its files say", False),
    "tokenizer_save_jinja_files": _noop("the chat template as a file", "ft saves the tokenizer as it trained it"),
    "include_tokens_per_second": _noop("tokens per second in the log", "ft logs tokens per second always"),
    "include_tkps": _noop("tokens per second in the log", "ft logs tokens per second always"),
    "low_cpu_mem_usage": _noop("lean model loading", "ft loads weights straight into the model"),
    "local_rank": _noop("the process's rank", LAUNCHER),
    "world_size": _noop("the number of processes", LAUNCHER),
    "device": _noop("the device", "ft uses the GPU of each process (CPU without one)"),
    "torch_dtype": _noop("the model's dtype", "Axolotl sets it from bf16/fp16 over what the YAML says; ft also takes "
                         "the dtype from bf16/fp16"),
    "device_map": _noop("the device map", "ft places the model on each process's device", "auto"),
    "hf_use_auth_token": _noop("the hub token", "the hub library reads your saved token when it downloads"),
    "push_dataset_to_hub": _refused("pushing the prepared dataset to the Hub"),
    "dataset_num_proc": _noop("tokenizing processes", "ft tokenizes in batches in its own process"),
    "dataset_keep_in_memory": _noop("datasets in memory", "ft memory-maps its prepared data"),
    "multipack_real_batches": _noop("multipack batches", "ft packs each micro batch of bins itself"),
    "total_num_tokens": _noop("token counts", STATS),
    "total_supervised_tokens": _noop("token counts", STATS),
    "torch_empty_cache_steps": _noop("emptying the CUDA cache", "ft frees memory as the step ends"),
    "gc_steps": _noop("garbage collection every N steps", "it changes no result"),
    "gc_collect_steps": _noop("garbage collection every N steps", "it changes no result"),
    "is_llama_derived_model": _noop("the model family hint", "ft reads the model's config"),
    "is_mistral_derived_model": _noop("the model family hint", "ft reads the model's config"),
    "is_qwen_derived_model": _noop("the model family hint", "ft reads the model's config"),
    "is_falcon_derived_model": _noop("the model family hint", "ft reads the model's config"),
    "embeddings_skip_upcast": _noop("embedding upcasting", "ft keeps trainable weights in fp32 under bf16: true"),
    "experimental_skip_move_to_device": _noop("lazy device placement", "ft places the model once"),
    "use_kernels": _noop("Hugging Face kernels", KERNEL, False),
    "fused_attn_kernel": _noop("a fused attention kernel", KERNEL, False),
    "deepcompile": _noop("DeepSpeed's compiler", KERNEL, False),
    "axolotl_config_path": _noop("the config's own path", "ft knows the path it read"),
    "is_preprocess": _noop("Axolotl's preprocess flag", "ft preprocess is its own command"),
    "skip_prepare_dataset": _noop("skipping dataset preparation", "ft prepares once and reuses its cache", False),
    "save_first_step": _noop("a checkpoint after the first step", "it changes no result", False),
    "num_dataset_shards_to_save": _noop("sharded prepared data", "ft saves one prepared table"),
    "shuffle_before_merging_datasets": _noop("shuffling", "ft shuffles the merged rows by seed", False),
    "fix_untrained_tokens": _refused("resetting untrained token embeddings"),
    "tokenizer_use_mistral_common": _noop("mistral-common tokenizers", "ft tokenizes with the Hugging Face tokenizer "
                                          "files the model ships", False),
    "use_scattermoe": _noop("ScatterMoE kernels", KERNEL, False),
    "use_sonicmoe": _noop("SonicMoE kernels", KERNEL, False),
    # refused by name, with the feature in words
    "processor_type": _refused("multimodal models"),
    "processor_kwargs": _refused("multimodal models"),
    "image_size": _refused("multimodal models"),
    "image_resize_algorithm": _refused("multimodal models"),
    "freeze_mm_modules": _refused("multimodal models"),
    "tensor_parallel_size": _refused("tensor parallelism", 1),
    "dp_replicate_size": _refused("replicated FSDP groups (HSDP)", 1),
    "ring_attn_func": _noop("the ring-attention kernel", "ft's context parallelism gathers each group's keys and values"),
    "heads_k_stride": _noop("ring attention's heads per step", "ft's context parallelism gathers all heads at once"),
    "lora_rank_pattern": _refused("per-module LoRA ranks"),
    "lora_alpha_pattern": _refused("per-module LoRA alphas"),
    "use_wandb": _noop("Weights & Biases logging", "ft logs to W&B when wandb_project is set", False),
    "use_mlflow": _noop("MLflow logging", LOGGER, False),
    "use_comet": _noop("Comet logging", LOGGER, False),
    "use_trackio": _noop("Trackio logging", LOGGER, False),
    "use_otel_metrics": _noop("OpenTelemetry metrics", LOGGER, False),
    "use_swanlab": _noop("SwanLab logging", LOGGER, False),
    "use_mora": _refused("MoRA", False),
    "gptq_groupsize": _refused("GPTQ models"),
    "gptq_model_v1": _refused("GPTQ models", False),
    "lora_on_cpu": _refused("LoRA merged on the CPU", False),
    "eot_tokens": _noop("end-of-turn tokens", "ft trains each trained turn's end-of-turn text as the chat template "
                        "writes it (train_on_eos), whichever tokens those are"),
    "lr_div_factor": _refused("the one-cycle schedule's divisor"),
    "lr_groups": _refused("learning-rate groups"),
    "lr_scheduler_kwargs": _refused("learning-rate scheduler arguments"),
    "embedding_lr": _refused("a learning rate for the embeddings"),
    "embedding_lr_scale": _refused("a learning rate for the embeddings"),
    "optim_args": _refused("optimizer arguments"),
    "optim_target_modules": _refused("GaLore's target modules"),
    "save_compressed": _refused("compressed checkpoints", False),
    "dataset_shard_num": _refused("training on a shard of the data"),
    "dataset_shard_idx": _refused("training on a shard of the data"),
    "pretraining_dataset": Answer(MAPPED, "streaming pretraining datasets", (), pretraining_datasets),
    "pretraining_sample_concatenation": _refused("streaming pretraining datasets"),
    "pretrain_multipack_attn": Answer(REFUSED, "attention across packed pretraining rows", (True,),
                                      why="ft's packed rows never attend to each other"),
    "pretrain_multipack_buffer_size": _noop("the streamed packing buffer", "ft packs the whole prepared dataset "
                                            "best-fit decreasing"),
    "streaming": _noop("streaming datasets", "ft prepares the rows once into a memory-mapped cache (ft preprocess) "
                       "and trains the same rows", False),
    "streaming_multipack_buffer_size": _noop("the streamed packing buffer", "ft packs the whole prepared dataset "
                                             "best-fit decreasing"),
    "preprocess_iterable": _refused("streaming datasets", False),
    "max_prompt_len": _refused("a maximum prompt length"),
    "eval_sequence_len": _refused("a sequence length of its own for evaluation"),
    "eval_table_size": _noop("the table of evaluation predictions", "deprecated in Axolotl, where it does nothing now "
                             "(generate_samples replaced it)"),
    "do_bench_eval": _refused("benchmark evaluation during training", False),
    "bench_dataset": _refused("benchmark evaluation during training"),
    "bench_split": _refused("benchmark evaluation during training"),
    "num_generation_samples": _refused("Axolotl's sample generation during training"),
    "generate_samples": _refused("Axolotl's sample generation during training", False),
    "chunked_cross_entropy_num_chunks": _refused("a chosen number of loss chunks"),
    "noisy_embedding_alpha": _refused("NEFTune"),
    "mean_resizing_embeddings": _refused("mean-initialised new embeddings", False),
    "shrink_embeddings": _refused("shrinking the embeddings", False),
    "added_tokens_overrides": _refused("overriding the tokenizer's added tokens"),
    "default_system_message": _refused("a default system message"),
    "role_boundaries": _refused("role boundaries for chat masking"),
    "model_kwargs": _refused("model loading arguments"),
    "model_revision": _refused("a model revision (use revision_of_model)"),
    "quantization": _refused("post-training quantization"),
    "gptq": _refused("GPTQ models", False),
    "max_memory": _refused("a per-device memory map"),
    "gpu_memory_limit": _refused("a per-device memory map"),
    "rope_scaling": _refused("RoPE scaling overrides"),
    "s2_attention": _refused("shifted sparse attention", False),
    "sage_attention": _refused("SageAttention", False),
    "flex_attention": _refused("flex attention", False),
    "flex_attn_compile_kwargs": _noop("torch.compile arguments of flex attention", KERNEL),
    "gemma4_hybrid_attn_impl": _noop("Gemma 4's per-layer attention kernels", "ft's attention runs each layer on the "
                                     "flash kernel where its head size allows and on sdpa where not (Gemma 4's global "
                                     "layers)", False),
    "large_head_attention": _refused("large-head attention kernels", False),
    "flash_attn_d512": _refused("flash attention for head size 512", False),
    "expert_backend": _refused("a chosen experts implementation"),
    "llama4_linearized_experts": Answer(MAPPED, "Llama 4's experts as quantizable linear layers", (False,),
                                        _when_true("quantize_moe_experts", True)),
    "nonexpert_quantization": _refused("quantizing the non-expert weights"),
    "layer_offloading": _refused("layer offloading (ft offloads activations: activation_offloading)", False),
    "dynamic_checkpoint": _refused("dynamic checkpointing"),
    "fp32_norms": _refused("fp32 norm layers", False),
    "fp32_norm_classes": _refused("fp32 norm layers"),
    "float32": _refused("fp32 weights (ft's default without bf16)", True, False),
    "trainer_cls": _refused("a trainer class of one's own"),
    "plugins": _refused("this Axolotl plugin"),  # answered entry by entry: see PLUGINS
    "recipe": _refused("Axolotl recipes"),
    "mora": _refused("MoRA"),
    "hatchery": _refused("Hatchery"),
    "dense_mixer": _refused("DenseMixer"),
    "vllm": _noop("a vLLM server for generation", "ft samples with the trained model in the training process (rl: ebft)"),
    "rpo_alpha": _refused("RPO"),
    "cpo_alpha": _refused("CPO"),
    "resources_per_worker": _noop("Ray's settings", "read with `use_ray: true` only"),
    "use_ray": _noop("training on Ray", "ft trains on the processes it launches", False),
    "auto_find_batch_size": _refused("automatic batch-size search (ft plan says what fits)", False),
    "pad_to_multiple_of": _refused("padding to a multiple"),
    "adam_beta3": _refused("a third Adam beta"),
    "adam_epsilon2": _refused("a second Adam epsilon"),
    "ddp": _noop("DDP", "ft uses DDP for several processes without ZeRO or FSDP"),
    "fsdp_final_state_dict_type": _refused("a final FSDP state-dict type of its own (set fsdp_config.state_dict_type)"),
    "qlora_sharded_model_loading": _noop("sharded QLoRA loading", "ft loads a 4-bit base share by share under FSDP"),
    "merge_lora": _refused("merging at the end of training (run ft merge-lora)", False),
    "merge_method": _refused("merge methods"),
    "tiled_mlp_use_original_mlp": _refused("this tiled-MLP setting"),
    "base_model_ignore_patterns": _noop("files skipped when downloading", "ft reads the files the model folder has"),
    "sample_packing_seq_len_multiplier": _noop("Axolotl's older packing setting", "ft packs best-fit decreasing "
                                               "into bins of sequence_len"),
    "torchdistx_path": _noop("torchdistx", "ft loads weights straight into the model"),
}

# Axolotl's plugins (`plugins:` entries), by the last two parts of their import path.
PLUGINS: dict[str, Answer] = {
    "cut_cross_entropy.CutCrossEntropyPlugin": Answer(MAPPED, "Cut Cross-Entropy", (),
                                                      lambda _: {"chunked_cross_entropy": True}),
    "liger.LigerPlugin": _noop("Liger kernels", KERNEL),
    "kernels.KernelsPlugin": _noop("Hugging Face kernels", KERNEL),
    "kd.KDPlugin": _noop("knowledge distillation (the kd plugin)", "ft distills when `teacher_model` is set, with "
                         "the kd_* keys"),
    "lm_eval.LMEvalPlugin": _noop("lm-evaluation-harness after training (the lm_eval plugin)", "ft runs lm-eval on "
                                  "the trained model itself when `lm_eval_tasks` is set"),
    "spectrum.SpectrumPlugin": _refused("Spectrum (layer selection by signal-to-noise)"),
    "grokfast.GrokfastPlugin": _refused("Grokfast"),
    "llm_compressor.LLMCompressorPlugin": _noop("LLM Compressor sparse fine-tuning", "ft keeps a sparse model's "
                                                "zeros itself when `llmcompressor:` is set"),
    "densemixer.DenseMixerPlugin": _refused("DenseMixer"),
    "diffusion.DiffusionPlugin": Answer(MAPPED, "diffusion language-model training (LLaDA)", (),
                                        lambda _: {"diffusion": {}}),
    "expert_parallel.ExpertParallelPlugin": _refused("expert parallelism"),
    "mora.MoraPlugin": _refused("MoRA"),
    "nemo_gym.NemoGymPlugin": _refused("NeMo Gym environments"),
    "hatchery.HatcheryPlugin": _refused("Hatchery"),
    "swanlab.SwanLabPlugin": _noop("SwanLab logging", LOGGER),
}


FALLBACK = _refused("this Axolotl setting")


def answer(key: str) -> Optional[Answer]:
    """ft's answer to a key of Axolotl's vocabulary that ft's own schema does not have (None for other keys)."""
    if key not in VOCABULARY:
        return None
    return KEYS.get(key) or next((a for prefix, a in GROUPS if key.startswith(prefix)), FALLBACK)


def plugin_answer(path: str) -> Optional[Answer]:
    """ft's answer to a `plugins:` entry (an import path such as axolotl.integrations.liger.LigerPlugin)."""
    parts = str(path).split(".")
    key = ".".join(parts[-2:])
    if key in PLUGINS:
        return PLUGINS[key]
    return next((a for k, a in PLUGINS.items() if len(parts) >= 3 and k.split(".")[0] == parts[-3]), None)


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


# Values Axolotl derives while it reads a config, overwriting what the YAML says (normalize_config).
DERIVED = frozenset({"torch_dtype"})
# Keys of Axolotl's older schema that its archived examples still hold (Axolotl itself no longer reads them).
RETIRED = frozenset({"gptq_groupsize", "gptq_model_v1", "base_model_ignore_patterns", "sample_packing_seq_len_multiplier"})

# Every key of Axolotl's schema that ft's own schema does not have (its input config and mixins, the
# integrations' args), July 2026.
VOCABULARY = frozenset("""
 adam_beta3 adam_epsilon2 added_tokens_overrides auto_find_batch_size axolotl_config_path
batch_flattening bench_dataset bench_split bfloat16 
chunked_cross_entropy_num_chunks comet_api_key comet_experiment_config comet_experiment_key
comet_mode comet_online comet_project_name comet_workspace cpo_alpha
 cut_cross_entropy dataloader_drop_last dataloader_num_workers dataloader_pin_memory
dataloader_prefetch_factor dataset_keep_in_memory dataset_num_proc dataset_shard_idx dataset_shard_num ddp
ddp_broadcast_buffers ddp_bucket_cap_mb deepcompile default_system_message dense_mixer device device_map 
dion_lr dion_momentum dion_rank_fraction dion_rank_multiple_of do_bench_eval dp_replicate_size
dpo_beta dpo_generate_during_eval dpo_loss_type dpo_loss_weights dpo_norm_loss dpo_padding_free
dpo_use_liger_kernel dpo_use_logits_to_keep dpo_use_weighting dsv4_bf16_all dsv4_fp4_grouped_mode
dsv4_fp8_lora_kernel dsv4_fp8_nonexpert_mode dsv4_shared_mlp_lora_kernel dynamic_checkpoint 
embedding_lr embedding_lr_scale embeddings_skip_upcast eot_tokens eval_sequence_len eval_table_size
experimental_skip_move_to_device expert_backend expert_parallel_backend
expert_parallel_fallback_on_unsupported expert_parallel_num_nvl_bytes expert_parallel_num_rdma_bytes
expert_parallel_size expert_parallel_token_capacity fix_untrained_tokens flash_attn_cross_entropy flash_attn_d512
flash_attn_fuse_mlp flash_attn_rms_norm flash_optimum flex_attention flex_attn_compile_kwargs float16 float32
fp32_norm_classes fp32_norms   freeze_mm_modules fsdp_final_state_dict_type
fsdp_version fused_attn_kernel gc_collect_steps gc_steps gemma4_fp8_nonexpert gemma4_hybrid_attn_impl
gemma4_nf4_nonexpert generate_samples generation_do_sample generation_max_new_tokens generation_prompt_ratio
generation_temperature generation_top_k generation_top_p gptq gpu_memory_limit gradient_checkpointing_kwargs
gradio_max_new_tokens gradio_server_name gradio_server_port gradio_share gradio_temperature gradio_title
grokfast_alpha grokfast_lamb hatchery heads_k_stride hf_mlflow_log_artifacts hf_use_auth_token hub_model_id
hub_revision hub_strategy image_resize_algorithm image_size include_tkps include_tokens_per_second
is_falcon_derived_model is_llama_derived_model is_mistral_derived_model is_preprocess is_qwen_derived_model
kd_normalize_topk kd_online_server
kd_online_server_base_url kd_online_timeout kd_online_topk kd_temperature_min kd_trainer 
 large_head_attention layer_offloading liger_cross_entropy liger_fused_linear_cross_entropy
liger_layer_norm liger_rms_norm_gated liger_swiglu
liger_use_token_scaling llama4_linearized_experts
lm_eval_model local_rank lora_alpha_pattern
lora_embedding_kernel lora_mlp_kernel lora_o_kernel lora_on_cpu lora_qkv_kernel lora_rank_pattern low_cpu_mem_usage
lr_div_factor lr_groups  lr_scheduler_kwargs max_memory max_prompt_len mean_resizing_embeddings
merge_lora merge_method  mlflow_experiment_name mlflow_run_name mlflow_tracking_uri model_kwargs
model_revision moe_bnb_fast moe_dequant_chunk_size
moe_grouped_backend mora multipack_real_batches nemo_gym_auto_clone nemo_gym_auto_start nemo_gym_config_paths
nemo_gym_datasets nemo_gym_dir nemo_gym_enabled nemo_gym_head_port nemo_gym_max_turns nemo_gym_model_name
nemo_gym_multi_turn nemo_gym_run_timeout nemo_gym_server_timeout nemo_gym_verify_timeout noisy_embedding_alpha
nonexpert_quantization num_dataset_shards_to_save num_generation_samples nvfp4_merge_aware
nvfp4_merge_aware_start_step optim_args optim_target_modules otel_metrics_host otel_metrics_port pad_to_multiple_of
peft_autocast_adapter_dtype peft_ensure_weight_tying peft_layer_replication peft_layers_pattern
peft_layers_to_transform peft_trainable_token_indices plugins pose_max_context_len pose_num_chunks
pose_split_on_token_ids preprocess_iterable pretrain_multipack_attn pretrain_multipack_buffer_size
pretraining_dataset pretraining_sample_concatenation  processor_kwargs processor_type
profiler_steps profiler_steps_start push_dataset_to_hub qgalore_cos_threshold qgalore_gamma_proj
qgalore_proj_bits qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type qgalore_queue_size qgalore_rank
qgalore_scale qgalore_update_proj_gap qlora_sharded_model_loading quantization ray_num_workers
ray_run_name recipe
remove_unused_columns resources_per_worker ring_attn_func role_boundaries rope_scaling rpo_alpha
s2_attention sage_attention sample_packing_bin_size sample_packing_eff_est sample_packing_group_size
sample_packing_mp_start_method sample_packing_sequentially save_compressed save_first_step
save_safetensors scaling_softmax scaling_softmax_bias scaling_softmax_factor sdpa_varlen
shrink_embeddings shuffle_before_merging_datasets
skip_prepare_dataset spectrum_model_name spectrum_top_fraction streaming streaming_multipack_buffer_size
tensor_parallel_size tiled_mlp_num_shards tiled_mlp_use_original_mlp tokenizer_legacy tokenizer_save_jinja_files
tokenizer_use_mistral_common torch_compile_backend torch_compile_options torch_empty_cache_steps torchdistx_path
total_num_tokens total_supervised_tokens trackio_project_name trackio_run_name trackio_space_id trainer_cls 
use_comet use_dsv4_kernels use_glm_dsa_kernels use_kernels use_mlflow  use_otel_metrics
use_pose use_ray use_scattermoe use_sonicmoe use_trackio use_wandb vllm world_size xformers_attention use_mora
use_swanlab swanlab_api_host swanlab_api_key swanlab_completion_log_interval swanlab_completion_max_buffer
swanlab_description swanlab_experiment_name swanlab_lark_secret swanlab_lark_webhook_url swanlab_log_completions
swanlab_log_model swanlab_mode swanlab_project swanlab_web_host swanlab_workspace
""".split()) | RETIRED | DERIVED


def translate(key: str, value: Any) -> tuple[dict[str, Any], str]:
    """ft's keys for an Axolotl `key: value` (`answer(key)` is not None or key is `plugins`), and what was done in
    words ("" for an empty value). A value ft cannot honour raises ValueError with the sentence to show."""
    if key == "plugins":
        return _plugins(value)
    found = answer(key) or FALLBACK
    if is_empty(value):
        return {}, ""
    if any(value == same and type(value) is type(same) for same in found.same):
        return {}, f"`{key}: {_show(value)}` ignored: {found.why or 'what ft does anyway'}"
    if found.kind == NOOP:
        return {}, f"`{key}` ignored ({found.feature}): {found.why}"
    if found.kind == MAPPED and found.to is not None:
        keys = found.to(value)
        return keys, f"`{key}: {_show(value)}` ({found.feature}) → " + ", ".join(f"`{k}: {_show(v)}`" for k, v in keys.items())
    raise ValueError(f"Axolotl's `{key}` ({found.feature}) is not supported by ft yet; remove it or leave it empty")


def _plugins(value: Any) -> tuple[dict[str, Any], str]:
    if is_empty(value):
        return {}, ""
    keys: dict[str, Any] = {}
    said = []
    for entry in value if isinstance(value, list) else [value]:
        found = plugin_answer(entry)
        if found is None:
            raise ValueError(f"the plugin `{entry}` is not one ft knows (ft maps Axolotl's own plugins where it has an "
                             "equivalent); remove it")
        if found.kind == REFUSED:
            raise ValueError(f"Axolotl's plugin `{entry}` ({found.feature}) is not supported by ft yet; remove it")
        if found.kind == NOOP:
            said.append(f"plugin `{entry}` ignored ({found.feature}): {found.why}")
            continue
        mapped = found.to(entry) if found.to else {}
        keys.update(mapped)
        said.append(f"plugin `{entry}` ({found.feature}) → " + ", ".join(f"`{k}: {_show(v)}`" for k, v in mapped.items()))
    return keys, "; ".join(said)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
