"""TrainingArguments from the training, logging, model and distributed sections."""

from __future__ import annotations

import math
from typing import Any, Optional

from ft.config.logs import LoggingConfig
from ft.config.model import ModelConfig
from ft.config.training import TrainingConfig
from ft.model.precision import resolve_dtype
from ft.train.optimizers import OPTIMIZERS
from ft.train.schedulers import SCHEDULERS


def steps_per_epoch(t: TrainingConfig, train_rows: int, world_size: int) -> int:
    batches = math.ceil(train_rows / (t.micro_batch_size * world_size))
    return max(1, batches // t.gradient_accumulation_steps)


def _every(steps: Optional[float], per_epoch: Optional[int], epoch_steps: int) -> Optional[float]:
    if steps is not None:
        return steps
    if per_epoch is not None:
        return max(1, epoch_steps // per_epoch)
    return None


def optimizer_name(name: str, on_gpu: bool, sharded: bool) -> str:
    """The Trainer's `optim` for `optimizer:`; PyTorch's AdamW as its fused CUDA kernel on one GPU without
    DeepSpeed or FSDP (the same update in one kernel per step instead of a loop over tensors)."""
    hf = OPTIMIZERS.get(name).hf_name
    return "adamw_torch_fused" if hf == "adamw_torch" and on_gpu and not sharded else hf


def training_arguments(
    t: TrainingConfig, lg: LoggingConfig, m: ModelConfig, train_rows: int, has_eval: bool, world_size: int,
    launch: dict[str, Any], sequential: bool = False,
) -> Any:
    """TrainingArguments for `train_rows` items (rows, or packed bins) per epoch; `launch` holds the
    DeepSpeed or FSDP settings (ft.launch.backend.trainer_arguments)."""
    import torch
    from transformers import TrainingArguments

    dtype = resolve_dtype(m)
    epoch_steps = steps_per_epoch(t, train_rows, world_size)
    has_eval = has_eval and t.eval_strategy != "no"
    per_epoch = t.evals_per_epoch or (1 if t.eval_strategy == "epoch" else None)
    eval_every = _every(t.eval_steps, per_epoch, epoch_steps) if has_eval else None
    save_every = _every(t.save_steps, t.saves_per_epoch, epoch_steps)
    early = t.early_stopping_patience is not None and has_eval
    load_best = (early or t.load_best_model_at_end) and has_eval
    best = load_best or (t.save_strategy == "best" and has_eval)  # a metric to compare evaluations by
    if best:  # the best checkpoint must be saved where it is measured
        eval_every = eval_every or epoch_steps
        save_every = eval_every
    metric = "eval_" + (t.metric_for_best_model or "loss").removeprefix("eval_")
    lower_is_better = metric in ("eval_loss", "eval_perplexity")
    warmup: float = t.warmup_steps if t.warmup_steps is not None else (t.warmup_ratio or 0.0)
    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=SCHEDULERS.get(t.lr_scheduler) if t.cosine_min_lr_ratio is None else "cosine_with_min_lr",
        warmup_steps=warmup,
        optim=optimizer_name(t.optimizer, on_gpu, bool(launch)),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tf32=m.tf32 if on_gpu else None,
        logging_steps=lg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must reach the NaN guard, not be averaged away
        report_to=list(lg.trackers) or "none",
        run_name=lg.wandb_name,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        save_strategy=t.save_strategy if t.save_strategy != "steps" else "steps" if save_every else "epoch",
        save_steps=save_every or 500,
        save_only_model=t.save_only_model,
        save_total_limit=None,  # ft deletes old checkpoints itself, after the new one is complete (train/checkpoints.py)
        load_best_model_at_end=load_best,
        metric_for_best_model=metric if (best or t.metric_for_best_model) else None,
        greater_is_better=(t.greater_is_better if t.greater_is_better is not None else not lower_is_better) if (best or t.metric_for_best_model) else None,
        seed=t.seed,
        data_seed=t.seed,
        neftune_noise_alpha=t.neftune_noise_alpha,
        torch_compile=t.torch_compile or t.torch_compile_mode is not None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "sequential" if sequential else "random",
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation keeps no logits: ft computes no metrics from them
        include_num_input_tokens_seen="no",  # a device count read each micro batch (a host sync): FtTrainer.log adds the collator's
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
    )
    kwargs.update(launch)
    if t.torch_compile_mode is not None:
        kwargs["torch_compile_mode"] = t.torch_compile_mode
    if t.accelerator_config is not None:
        kwargs["accelerator_config"] = t.accelerator_config.trainer_value()
    if t.cosine_min_lr_ratio is not None:
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": t.cosine_min_lr_ratio}
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    return TrainingArguments(**kwargs)

