"""`ft train`: config → data → model → train → save, top to bottom.

`build_run` is the whole composition up to the first step; `run_train` trains and saves. The tests build
their runs with `build_run` too, so they exercise exactly what `ft train` does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft.commands.preprocess import prepare_data
from ft.config import FtConfig, resolved_yaml
from ft.errors import UserError
from ft.launch.backend import (check_fsdp_wrap, check_launch, check_trackers, end_processes, report_backend,
                               shards_whole_modules, trainer_arguments, world_size)

log = logging.getLogger("ft")


@dataclass
class Run:
    tokenizer: Any
    prepared: Any
    model: Any
    trainer: Any
    metrics: Any
    layout: str  # packed, padding-free or padded batches
    attention: str  # the kernel flattened batches run through, in words ("" for padded batches)


def build_run(cfg: FtConfig, world: int) -> Run:
    """Everything `ft train` builds before its first step, from the sections each part needs."""
    import torch

    from ft.data.prepare import report
    from ft.tokenizer.load import load_tokenizer
    from ft.train.args import training_arguments
    from ft.data.packing import PADDED, PADDING_FREE, batch_layout
    from ft.train.batches import pair_sets, training_sets
    from ft.train.trainer import build_trainer

    if cfg.training.fill_micro_batch:
        from ft.commands.plan import filled_micro_batch

        cfg = filled_micro_batch(cfg, world)
    d, t = cfg.data, cfg.training
    sharding = shards_whole_modules(cfg.distributed, world)
    if t.tiled_mlp and sharding == "DeepSpeed ZeRO-3":
        raise UserError("`tiled_mlp` is not supported with DeepSpeed ZeRO-3 (its per-tile recompute aborts inside "
                        "ZeRO-3's parameter gathering); use ZeRO-2, or gradient_checkpointing with activation_offloading")
    if cfg.adapter.peft.loftq_config and sharding:
        raise UserError(f"LoftQ (`peft: loftq_config`) is not supported with {sharding} (each process holds a share of "
                        "every weight it quantizes); use DeepSpeed ZeRO-1/2 or DDP")
    cp = cfg.distributed.context_parallel_size or 1  # Axolotl's mesh: dp_shard × context parallel groups
    if cfg.distributed.dp_shard_size and cfg.distributed.dp_shard_size * cp != world:
        wanted = cfg.distributed.dp_shard_size * cp
        raise UserError(f"`dp_shard_size: {cfg.distributed.dp_shard_size}`" + (f" × context_parallel_size {cp}" if cp > 1 else "")
                        + f", and this run has {world} process{'es' if world > 1 else ''}: ft shards each weight over "
                        f"every process; launch {wanted} processes or set dp_shard_size to {world // cp or 1}")
    from ft.model.sharded import shards_at_load

    fsdp2 = bool(cfg.distributed.fsdp) and cfg.distributed.fsdp_config.fsdp_version == 2
    if cfg.quantization.quantize_moe_experts and sharding and not (
            shards_at_load(fsdp2, 2, cfg.quantization.bits, world) or (fsdp2 and cfg.quantization.bits == 8)):
        raise UserError(f"`quantize_moe_experts` is not supported with {sharding} yet (it would shard the packed bytes "
                        "of each experts' weight apart from its scales); use FSDP2, DeepSpeed ZeRO-1/2 or DDP, or "
                        "remove it")
    on_gpu = torch.cuda.is_available()
    pairs, reward, sampled = cfg.preference.trains_pairs, cfg.preference.reward_model, cfg.preference.samples
    if sampled and sharding:
        from ft.config.schema import SAMPLING_SHARDED

        raise UserError(SAMPLING_SHARDED.format(rl=cfg.preference.rl, backend=sharding))
    if cfg.diffusion.diffusion and sharding:
        raise UserError(f"diffusion training is not supported with {sharding} yet (its loss runs the head a chunk of "
                        "positions at a time, outside the forward where the head is whole); use DDP or DeepSpeed ZeRO-1/2")
    # a pair's answers end to end; a reward model's rows padded (its score is read at each row's last token);
    # EBFT samples from each row by itself
    steps = cfg.preference.step_classes is not None
    layout = PADDED if reward or sampled or steps else PADDING_FREE if pairs else batch_layout(d, t.group_by_length, on_gpu)
    prompt_learning = prompt_learning_method(cfg)
    if prompt_learning and t.use_eaft:
        raise UserError(f"`use_eaft` weights each token's loss, and `adapter: {cfg.adapter.adapter}` puts virtual tokens "
                        "before each row, which its logits would not line up with; remove one of them")
    if prompt_learning:
        if sharding:  # seen: prompt tuning under ZeRO-3 on two ranks never finished its first step
            raise UserError(f"`adapter: {cfg.adapter.adapter}` is not supported with {sharding} yet (its virtual tokens "
                            "sit beside embeddings that are sharded); use DeepSpeed ZeRO-1/2 or DDP")
        if pairs or cfg.distills or sampled or steps or cfg.diffusion.diffusion:
            what = ("preference training" if pairs else f"`rl: {cfg.preference.rl}`" if sampled else "a process reward model" if steps
                    else "diffusion training" if cfg.diffusion.diffusion else "distillation")
            raise UserError(f"`adapter: {cfg.adapter.adapter}` puts virtual tokens before each row, which {what} does "
                            "not take yet; use lora")
        layout = PADDED  # its virtual tokens go before each row: rows cannot be laid end to end
    torch.manual_seed(t.seed)

    # data
    tokenizer = load_tokenizer(cfg.model)
    k = cfg.distillation
    distills, cached = cfg.distills, k.kd_cache or bool(cfg.logprobs_datasets)
    if distills:
        from ft.config.schema import DISTILL_SHARDED
        from ft.model.teacher import shared_vocabulary

        if sharding:
            raise UserError(DISTILL_SHARDED.format(sharding))
        # before any model loads; the rows' own log-probabilities are checked against the tokenizer as they are read
        vocab = shared_vocabulary(k, tokenizer, cfg.model.trust_remote_code)
    diffusion = cfg.diffusion.diffusion
    if diffusion is not None:
        from ft.train.diffusion import mask_token

        mask_id, added = mask_token(tokenizer, diffusion)
        log.info("diffusion training (LLaDA): mask token %s (id %d%s)", tokenizer.convert_ids_to_tokens(mask_id), mask_id,
                 ", added to the vocabulary" if added else "")
        if diffusion.generate_samples:
            log.info("diffusion.generate_samples: ft prints no samples during training (Axolotl's sample printing)")
    prepared = prepare_data(cfg, tokenizer)
    log.info(report(prepared, d.sequence_len))

    # model
    model, layout, attention = model_for_training(cfg, tokenizer, layout, world)

    # trainer
    if pairs:
        sets = pair_sets(layout, prepared, tokenizer.pad_token_id)
    else:
        sets = training_sets(d, layout, t.micro_batch_size, prepared, tokenizer.pad_token_id, on_gpu, with_rows=distills and cached)
    distributed = trainer_arguments(cfg.distributed, world)
    if distributed["ddp_find_unused_parameters"] is None and cfg.adapter.adapter and not has_experts(model):
        # every LoRA weight takes part in every forward: DDP need not search the graph for unused ones each step
        distributed["ddp_find_unused_parameters"] = False
    args = training_arguments(t, cfg.logging, cfg.model, len(sets.train), sets.eval is not None, world, distributed,
                              sequential=d.curriculum_sampling)
    # the chunked loss reads the decoder's hidden states, which prompt-learning methods lengthen by their virtual tokens
    chunked = t.chunked_cross_entropy and not prompt_learning and not steps and uses_chunked_loss(model, sharding)
    offload = None
    if t.activation_offloading:
        from ft.train.offload import ActivationOffload

        offload = ActivationOffload()
    extra: dict[str, Any] = {}
    if distills:
        from ft.commands.preprocess import teacher_cache
        from ft.train.distill_trainer import DistillTrainer

        extra["trainer_class"] = DistillTrainer
        cache = teacher_cache(cfg, prepared, tokenizer, vocab) if cached else None
        teacher = None if cached else teacher_for_training(cfg, model, layout, vocab)
    if reward:
        from ft.train.reward import RewardTrainer

        extra["trainer_class"] = RewardTrainer
    elif sampled:
        from ft.train.ebft_trainer import EbftTrainer
        from ft.train.grpo import GrpoTrainer

        extra["trainer_class"] = EbftTrainer if cfg.preference.rl == "ebft" else GrpoTrainer
    elif diffusion is not None:
        from ft.train.diffusion import DiffusionTrainer

        extra["trainer_class"] = DiffusionTrainer
    elif pairs:
        from ft.train.preference import PreferenceTrainer

        extra["trainer_class"] = PreferenceTrainer
        reference = reference_copy(cfg, model, sharding)
    trainer, metrics = build_trainer(model, tokenizer, args, sets, t.early_stopping_patience, chunked_loss=chunked and not pairs,
                                     offload=offload, keep_checkpoints=t.save_total_limit,
                                     watchdog=(t.loss_watchdog_threshold, t.loss_watchdog_patience) if t.loss_watchdog_threshold else None,
                                     **extra)
    if reward:
        trainer.center_rewards = cfg.preference.center_rewards_coefficient or 0.0
        log.info("reward model: a one-number head on each text's last token, the loss %s", cfg.preference.reward_loss)
    elif pairs:
        trainer.preference, trainer.reference_model, trainer.logits_from_model = cfg.preference, reference, not chunked
        if cfg.preference.rl == "kto":
            from ft.train.preference import KTO_METRICS

            trainer.metric_names = KTO_METRICS
        if cfg.preference.precompute_ref_log_probs and cfg.preference.reference:
            from ft.train.reference import ReferenceStore, reference_key

            trainer.reference_store = ReferenceStore(prepared.path, reference_key(cfg, prepared.path.name))
        log.info(describe_preference(cfg, reference is not None))
    if diffusion is not None:
        from ft.train.diffusion import configure as configure_diffusion

        configure_diffusion(trainer, diffusion, mask_id, tokenizer)
    if steps:
        log.info("process reward model: a %d-class head on every token, cross-entropy on each step's last token",
                 cfg.preference.step_classes)
    if cfg.preference.rl == "ebft":
        from ft.train.ebft_trainer import configure

        log.info(configure(trainer, cfg.online, model, tokenizer, full=cfg.adapter.adapter is None))
    elif sampled:
        from ft.train.grpo import configure as configure_grpo

        log.info(configure_grpo(trainer, cfg.preference.rl, cfg.online, model, tokenizer, full=cfg.adapter.adapter is None))
    if cfg.adapter.peft_init_lora_weights:
        from ft.model.adapter import save_initial_adapter

        if world > 1:
            raise UserError("`peft_init_lora_weights` is supported on one process yet (the conversion of the adapter at "
                            "the end runs where the whole adapter is); remove it or train on one process")
        trainer.initial_adapter = save_initial_adapter(model, t.output_dir)
    if cfg.quantization.qat and cfg.quantization.qat.fake_quant_after_n_steps:
        from ft.train.callbacks import FakeQuantizationFrom

        trainer.add_callback(FakeQuantizationFrom(cfg.quantization.qat.fake_quant_after_n_steps))
    cp = cfg.distributed.context_parallel_size
    if cp and cp > 1:
        from ft.train.context_parallel import enable

        if prompt_learning:
            raise UserError(f"`adapter: {cfg.adapter.adapter}` puts virtual tokens before each row, which context "
                            "parallelism would split; use lora")
        enable(trainer, model, cp, world)
    if t.jagged_restart_steps:
        trainer.jagged_restarts = (t.jagged_restart_steps, t.jagged_restart_warmup_steps or 10,
                                   t.jagged_restart_anneal_steps or 1, t.cosine_min_lr_ratio or 0.001)
    if cfg.adapter.relora:
        from ft.train.relora import ReLoRA

        trainer.relora = ReLoRA(model, t.jagged_restart_steps, t.seed, cfg.adapter.relora_prune_method,
                                cfg.adapter.relora_prune_ratio)
        trainer.add_callback(trainer.relora)
    if t.llmcompressor:
        from ft.train.sparsity import KeepZeros

        trainer.add_callback(KeepZeros(model, t.llmcompressor))
        if t.llmcompressor.save_compressed:
            log.warning("llmcompressor: save_compressed ignored: ft writes the trained weights dense (their zeros kept), "
                        "not in compressed-tensors' sparse format")
    if t.lisa_n_layers:
        from ft.train.callbacks import LisaLayers

        lisa = LisaLayers(t.lisa_n_layers, t.lisa_step_interval, t.lisa_layers_attribute, t.seed)
        try:
            total = len(lisa.layers(model))
        except AttributeError:
            raise UserError(f"`lisa_layers_attribute: {t.lisa_layers_attribute}` is not the path of this model's decoder "
                            "layers (model.layers on most models)") from None
        if world > 1:
            raise UserError("LISA is supported on one process yet (it changes which weights train during the run, "
                            "which DDP's gradient buckets do not follow); train on one process")
        if t.lisa_n_layers > total:
            raise UserError(f"`lisa_n_layers: {t.lisa_n_layers}` is more than this model's {total} layers")
        trainer.add_callback(lisa)
    trainer.muon = t.optimizer == "muon"
    if t.use_eaft:
        trainer.eaft = (t.eaft_alpha, t.eaft_k)
        log.info("EAFT: each trained token's loss weighted by the entropy of its top-%d logits to the power %g",
                 t.eaft_k, t.eaft_alpha)
    if t.cosine_constant_lr_ratio is not None or t.lr_quadratic_warmup:  # ft's own cosine
        trainer.cosine_schedule = (t.cosine_constant_lr_ratio, t.cosine_min_lr_ratio or 0.0, t.lr_quadratic_warmup)
    if cfg.adapter.loraplus_lr_ratio or cfg.adapter.loraplus_lr_embedding:
        trainer.loraplus = (cfg.adapter.loraplus_lr_ratio or 1.0, cfg.adapter.loraplus_lr_embedding)
    if distills:
        trainer.distillation, trainer.teacher, trainer.teacher_cache, trainer.vocab = k, teacher, cache, vocab
        log.info("distillation %s", k.describe())
    if any(p.is_meta for p in model.parameters()):
        from ft.model.sharded import load_shards

        trainer.after_sharding = lambda sharded, offload: load_shards(sharded, cfg.model.base_model, offload)
    if cfg.evaluation.do_causal_lm_eval and prepared.eval is not None:
        trainer.eval_extras = generation_during_training(cfg, prepared, tokenizer, sharding)
    if steps:
        trainer.reports_perplexity = False  # a classification loss
    for callback in trainer.callback_handler.callbacks:  # the metrics log and the console: no perplexity of other losses
        if hasattr(callback, "perplexity"):
            callback.perplexity = trainer.reports_perplexity
    return Run(tokenizer, prepared, model, trainer, metrics, layout, attention)


def prompt_learning_method(cfg: FtConfig) -> bool:
    """Whether the adapter puts virtual tokens before each row (prompt tuning, prefix tuning)."""
    from ft.model.methods import METHODS

    return bool(cfg.adapter.adapter) and METHODS.get(cfg.adapter.adapter).prompt_learning


def has_experts(model: Any) -> bool:
    """Whether the model routes tokens to some of its experts (weights a step may leave unused)."""
    config = model.config.get_text_config()
    return bool(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None))


def reference_copy(cfg: FtConfig, model: Any, sharding: str) -> Any:
    """The frozen reference of a preference loss that has one, when it is not the model with its adapter off:
    a copy of the model being fully fine-tuned (None otherwise)."""
    import copy

    if not cfg.preference.reference or cfg.adapter.adapter or cfg.preference.precompute_ref_log_probs:
        return None
    if sharding:
        raise UserError(f"`rl: {cfg.preference.rl}` with full fine-tuning keeps a frozen copy of the model as its reference, "
                        f"which ft cannot shard with {sharding} yet; train an adapter (`adapter: lora`), whose reference is "
                        "the model with the adapter off")
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def teacher_for_training(cfg: FtConfig, model: Any, layout: str, vocab: int) -> Any:
    """The frozen teacher, taking the batches the model takes (its attention switched for flattened batches)."""
    from ft.data.packing import PADDED
    from ft.model.load import use_packed_attention
    from ft.model.precision import resolve_dtype
    from ft.model.teacher import load_teacher
    from ft.train.loss import causal_lm_of, chunked_loss_refusal

    why = chunked_loss_refusal(causal_lm_of(model).config.model_type, "")
    if why:
        raise UserError(f"distillation takes both models' losses a chunk of positions at a time, and {why}")
    teacher = load_teacher(cfg.distillation, cfg.model, resolve_dtype(cfg.model), vocab)
    why = chunked_loss_refusal(teacher.config.model_type, "")
    if why:
        raise UserError(f"`teacher_model`: {why}")
    if layout != PADDED:
        taken, _ = use_packed_attention(teacher, layout)
        if taken != layout:
            raise UserError("the teacher cannot take flattened batches (packed or padding-free); set `padding_free: false` "
                            "and `sample_packing: false`")
    return teacher


def describe_preference(cfg: FtConfig, copied: bool) -> str:
    p = cfg.preference
    if not p.reference:
        against = "no reference model"
    elif p.precompute_ref_log_probs:
        against = "reference log-probabilities computed once and cached beside the prepared data"
    elif copied:
        against = "reference: a frozen copy of the model"
    else:
        against = "reference: the same model with the adapter off"
    if p.rl == "kto":
        return (f"preference training: kto, β {p.rl_beta:g}, λ_D {p.kto_desirable_weight:g}, λ_U {p.kto_undesirable_weight:g}, "
                f"{against}; each row's text and its prompt with the row before's answer (the KL estimate) laid end to end")
    return f"preference training: {p.rl}, β {p.rl_beta:g}, {against}; each pair's answers laid end to end"


def generation_during_training(cfg: FtConfig, prepared: Any, tokenizer: Any, sharding: str) -> Any:
    """model → the generation metrics of `eval_generation_rows` held-out rows (do_causal_lm_eval)."""

    from ft.evaluate.predict import generation_metrics, rows_from_tokenized

    if sharding:
        raise UserError(f"`do_causal_lm_eval` is not supported with {sharding} (the weights are whole only inside the "
                        "forward pass); run `ft eval cfg.yml` after training")
    e = cfg.evaluation
    table = prepared.eval
    rows = rows_from_tokenized(table.column("input_ids").to_pylist(), table.column("labels").to_pylist(), tokenizer,
                               e.eval_generation_rows)
    log.info("generation metrics at each evaluation: %s on %d held-out rows", ", ".join(e.eval_causal_lm_metrics), len(rows))
    size = cfg.training.eval_batch_size or max(cfg.training.micro_batch_size, 8)
    return lambda model: generation_metrics(model, tokenizer, rows, e, size)


def model_for_training(cfg: FtConfig, tokenizer: Any, layout: str, world: int = 1) -> tuple[Any, str, str]:
    """The base model, its attention switched for flattened (packed or padding-free) batches, checkpointing
    on, quantized layers prepared and the adapter applied: what the Trainer gets; the batch layout (padded
    when the model cannot take flattened batches); and the attention kernel in words. A 4-bit base under
    FSDP2 on several processes stays on the meta device until FSDP has sharded it (ft.model.sharded)."""
    from ft.model.adapter import apply_adapter
    from ft.model.layers import change_layers
    from ft.model.load import load_model, prepare_for_training, use_packed_attention
    from ft.model.precision import describe_training_precision, keep_trainable_in_fp32, master_weights, resolve_dtype
    from ft.data.packing import PADDED

    m, q, a, t = cfg.model, cfg.quantization, cfg.adapter, cfg.training
    from ft.model.sharded import load_trainable, shards_at_load

    fsdp = bool(cfg.distributed.fsdp)
    on_meta = shards_at_load(fsdp, cfg.distributed.fsdp_config.fsdp_version, q.bits, world)
    model, grew = load_model(m, q, tokenizer, full=a.adapter is None, fsdp=fsdp, on_meta=on_meta,
                             reward=cfg.preference.reward_model, step_classes=cfg.preference.step_classes)
    check_fsdp_wrap(cfg.distributed, model)
    if cfg.diffusion.diffusion is not None:  # full attention within each row, through a 4-D mask (sdpa or eager)
        if model.config._attn_implementation not in ("sdpa", "eager"):
            model.set_attn_implementation("sdpa")
        attention = "sdpa, full attention within each row (diffusion)"
    else:
        layout, attention = use_packed_attention(model, layout, probe=not on_meta) if layout != PADDED else (layout, "")
    change_layers(model, m, q, t)
    layers = t.gradient_checkpointing_layers
    if layers == "auto":
        from ft.commands.plan import auto_checkpointed_layers

        layers = auto_checkpointed_layers(cfg, world)
    model = prepare_for_training(model, q, checkpointing=t.gradient_checkpointing, adapter=bool(a.adapter),
                                 checkpointed_layers=layers, selective=t.selective_checkpointing,
                                 selective_sliding=t.selective_checkpointing_sliding_window)
    if a.adapter:
        from ft.launch.deepspeed import zero3

        model = apply_adapter(a, model, grew, t.seed, on_meta, frozen_copy=cfg.preference.reference,
                              zero3=zero3(cfg.distributed.deepspeed))
    if a.unfrozen_parameters:
        from ft.model.load import unfreeze_only

        log.info("unfrozen_parameters: %d parameter tensors train, the others are frozen",
                 unfreeze_only(model, a.unfrozen_parameters, adapter=bool(a.adapter)))
    if on_meta:
        load_trainable(model, m.base_model)
    dtype = resolve_dtype(m)
    masters = master_weights(m, dtype)
    if masters:
        keep_trainable_in_fp32(model)  # embeddings trained beside LoRA; full fine-tuning loaded in fp32 already
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(describe_training_precision(dtype, masters, trainable))
    return model, layout, attention


def uses_chunked_loss(model: Any, sharding: str) -> bool:
    """Whether this model can take the chunked loss; says why not when it cannot."""
    from ft.train.loss import causal_lm_of, chunked_loss_refusal

    why = chunked_loss_refusal(causal_lm_of(model).config.model_type, sharding)
    if why:
        log.info("chunked cross-entropy off: %s; the plain loss builds the whole logits", why)
    return why is None


def run_train(cfg: FtConfig) -> dict[str, Any]:
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)  # before torch, peft and matplotlib are imported
    import torch

    from ft.train.checkpoints import resume_point
    from ft.train.lifecycle import StopOnSignal, disk_full, finished_summary
    from ft.train.trainer import save_outputs

    t = cfg.training
    resolved = resolved_yaml(cfg)
    if t.auto_resume_from_checkpoints and not t.resume_from_checkpoint:
        done = finished_summary(t.output_dir, resolved)
        if done is not None:
            log.info("this run finished already in %s (%d steps, train loss %s); nothing to do. To train further, "
                     "raise max_steps or num_epochs (it resumes from the last checkpoint), or set another output_dir",
                     t.output_dir, done.get("steps", 0), done.get("train_loss"))
            return done
    world = world_size()
    check_launch(cfg.distributed, world)
    check_trackers(cfg.logging.trackers)
    warn_if_it_will_not_fit(cfg, world)
    checkpoint = resume_point(t.resume_from_checkpoint, t.auto_resume_from_checkpoints, t.output_dir)
    if checkpoint and not any(checkpoint.glob("optimizer*")) and not any(checkpoint.glob("global_step*")):
        log.info("%s holds the weights only (save_only_model): the optimizer and the learning-rate schedule start "
                 "again from them", checkpoint.name)
    e = cfg.evaluation
    benchmarks = bool(e.lm_eval_tasks and e.lm_eval_post_train)
    if benchmarks and world > 1:
        log.info("lm_eval_tasks: after a run on several processes, score them with `ft eval cfg.yml --tasks %s`",
                 ",".join(e.lm_eval_tasks))
        benchmarks = False
    if benchmarks:  # a task whose data is missing is said now, not after the training
        from ft.evaluate.harness import check_tasks, task_manager

        check_tasks(task_manager(e.lm_eval_include_path, e.lm_eval_tasks), e.lm_eval_tasks)
    run = build_run(cfg, world)
    report_backend(cfg.distributed, run.trainer, world)

    # train
    stop = StopOnSignal(t.output_dir, world)
    run.trainer.add_callback(stop)
    started = time.perf_counter()
    stop.install()
    try:
        if checkpoint and _step_of(checkpoint) >= run.trainer.planned_steps():
            log.info("%s holds the last step already: finishing the run from it without training", checkpoint)
            result = run.trainer.finish_from(checkpoint)
            if run.trainer.relora is not None:  # the base as merged up to that step, for the whole model written
                run.trainer.relora.resume_from = Path(checkpoint)
                run.trainer.relora.on_train_begin(None, None, None)
        else:
            if checkpoint:
                log.info("resuming from %s", checkpoint)
                if run.trainer.relora is not None:
                    run.trainer.relora.resume_from = Path(checkpoint)
            result = run.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        stop.raise_if_stopped(run.trainer.state.global_step, t.output_dir)
        # save
        facts = {"batches": run.layout, "attention": run.attention or str(run.model.config._attn_implementation)}
        summary = save_outputs(run.trainer, run.tokenizer, run.metrics, result, time.perf_counter() - started, resolved, facts)
        end_processes()
        if benchmarks:
            benchmark_trained(cfg, run.trainer.model, run.tokenizer)
        return summary
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory at step {run.trainer.state.global_step + 1}: {oom_advice(cfg)}") from None
    except Exception as exc:  # a full disk shows as OSError, torch's RuntimeError or safetensors' own error
        if isinstance(exc, UserError) or not disk_full(exc, t.output_dir):
            raise
        from ft.train.checkpoints import newest_checkpoint

        last = newest_checkpoint(t.output_dir)
        kept = f"{last.name} is complete and the same command resumes from it" if last else "no checkpoint was complete yet"
        raise UserError(f"no space left on the device of {t.output_dir} while saving; free space there or set "
                        f"output_dir elsewhere ({kept})") from None
    finally:
        stop.restore()


def benchmark_trained(cfg: FtConfig, model: Any, tokenizer: Any) -> None:
    """lm_eval_tasks on the model just trained, as it is in memory (Axolotl's lm_eval_post_train)."""
    from ft.commands.eval import write_harness
    from ft.evaluate.harness import run_tasks
    from ft.evaluate.predict import padded_attention

    e = cfg.evaluation
    log.info("lm-eval on the trained model: %s", ", ".join(e.lm_eval_tasks))
    with padded_attention(model):
        results = run_tasks(model, tokenizer, e.lm_eval_tasks, e.lm_eval_batch_size, e.lm_eval_include_path)
    write_harness(cfg, results, "adapter")


def warn_if_it_will_not_fit(cfg: FtConfig, world: int) -> None:
    """`ft plan`'s estimate before anything loads: a warning when it predicts running out of GPU memory."""
    import torch

    if not torch.cuda.is_available():
        return
    from ft.commands.plan import gib, plan_report

    memory = torch.cuda.get_device_properties(0).total_memory
    try:
        report = plan_report(cfg, memory, world)
    except UserError:
        return  # a model type the plan does not model
    fits = report["with_data"]["fits"] if "with_data" in report else report["fits"]
    if not fits:
        fixes = "; ".join(c["change"] for c in report.get("changes", [])[:3])
        log.warning("ft plan estimates %s per GPU, above this GPU's %s: it will probably run out of memory (%s)",
                    gib(report["peak"]), gib(memory), fixes or "see `ft plan`")


def _step_of(checkpoint: Any) -> int:
    return int(str(checkpoint.name).split("-")[-1])


def oom_advice(cfg: FtConfig) -> str:
    """What to change, naming only what the config has not done yet."""
    t, d, a, q = cfg.training, cfg.data, cfg.adapter, cfg.quantization
    advice = []
    if not t.gradient_checkpointing:
        advice.append("turn on gradient_checkpointing")
    if t.micro_batch_size > 1:
        advice.append("lower micro_batch_size (raise gradient_accumulation_steps to keep the batch)")
    if a.adapter is None:
        advice.append("train an adapter (adapter: lora, or qlora with load_in_4bit)")
    elif q.bits is None:
        advice.append("quantize the base (adapter: qlora with load_in_4bit: true)")
    if t.gradient_checkpointing and not t.activation_offloading and not cfg.distributed.backend:
        advice.append("turn on activation_offloading")
    if not t.tiled_mlp and not cfg.distributed.fsdp:
        advice.append("turn on tiled_mlp")
    if not t.chunked_cross_entropy:
        advice.append("turn chunked_cross_entropy back on")
    advice.append(f"shorten sequence_len ({d.sequence_len})")
    try:  # the plan's changes, ranked by memory saved, when it models this architecture
        from ft.commands.plan import gib, plan_report

        report = plan_report(cfg, 1, 1, real_lengths=False)
        ranked = [f"{c['change']} ({gib(c['peak'])} by `ft plan`)" for c in report.get("changes", [])[:4]]
        if ranked:
            return "; ".join(ranked) + "; see `ft plan` for the whole estimate"
    except UserError:
        pass
    return "; ".join(advice)
