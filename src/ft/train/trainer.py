"""Build the transformers Trainer from the config, and write what a run leaves in output_dir."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from transformers import Trainer

from ft.train.batches import REAL_TOKENS, TrainingSets
from ft.train.callbacks import LossWatchdog, MetricsLog, peak_memory_mb, plot_losses, read_history
from ft.files import atomic_write_text, fsync_path

log = logging.getLogger("ft")


def build_trainer(model: Any, tokenizer: Any, args: Any, sets: TrainingSets, early_stopping_patience: Optional[int], *,
                  chunked_loss: bool = False, offload: Any = None, keep_checkpoints: Optional[int] = None,
                  trainer_class: Any = None, watchdog: Optional[tuple[float, int]] = None) -> tuple[Any, MetricsLog]:
    """The Trainer (`trainer_class`, FtTrainer by default) over `sets` with ft's callbacks (the metrics log and,
    when asked, early stopping), the chunked loss (ft.train.loss) when `chunked_loss`, and `offload`
    (ft.train.offload) around each step, and the loss watchdog when asked (`watchdog`: threshold, patience)."""
    from transformers import EarlyStoppingCallback

    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(Path(args.output_dir) / "metrics.jsonl")
    callbacks: list[Any] = [metrics] + ([LossWatchdog(*watchdog)] if watchdog else [])
    if early_stopping_patience and sets.eval is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = (trainer_class or FtTrainer)(
        model=model,
        args=args,
        data_collator=sets.collator,
        train_dataset=sets.train,
        eval_dataset=sets.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.chunked_loss, trainer.offload, trainer.keep_checkpoints = chunked_loss, offload, keep_checkpoints
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ft.train.console import Console

    trainer.remove_callback(ProgressCallback)  # its bars and dicts of quoted numbers: ft.train.console instead
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Console())
    return trainer, metrics


class FtTrainer(Trainer):
    """The transformers Trainer, counting the real tokens and the token slots of the training batches, with
    the chunked loss and activation offloading when they are on."""

    reports_perplexity = True  # its loss is a language model's cross-entropy (its exp a perplexity)
    real_tokens = 0
    token_slots = 0
    unlogged_tokens = 0  # real tokens since the last training log, this process (summed over processes at the log)
    largest_batch = 0  # token slots of the largest micro batch: what sets the activation memory
    chunked_loss = False
    eaft: Optional[tuple[float, int]] = None  # use_eaft: (eaft_alpha, eaft_k), the entropy weighting of the loss
    offload: Any = None
    keep_checkpoints: Optional[int] = None
    eval_extras: Any = None  # model → {metric: value}, added to each evaluation's logs (generation metrics)
    after_sharding: Any = None  # (model, offloaded) → None: fills what FSDP sharded on the meta device (ft.model.sharded)
    muon = False  # optimizer: muon (ft.train.muon)
    loraplus: Optional[tuple[float, Optional[float]]] = None  # LoRA+: (B's learning-rate ratio, embeddings' rate)
    initial_adapter: Optional[str] = None  # PiSSA / OLoRA: the adapter as it started (the final save converts)
    # ft's own cosine: (cosine_constant_lr_ratio or None, cosine_min_lr_ratio, lr_quadratic_warmup)
    cosine_schedule: Optional[tuple[Optional[float], float, bool]] = None
    jagged_restarts: Optional[tuple[int, int, int, float]] = None  # period, warmup, anneal, floor
    relora: Any = None  # ft.train.relora.ReLoRA: checkpoints hold its merged weights; the output is the whole model
    context_parallel: Any = None  # ft.train.context_parallel.ContextParallel: each batch split over its group

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        """The Trainer's accelerator settings, with DDP's gradients as views of its all-reduce buckets (torch's
        gradient_as_bucket_view): the buckets are the gradients, not a second copy of them beside each weight's."""
        from accelerate.utils import DistributedDataParallelKwargs

        args = super()._build_accelerator_args(**kwargs)
        for handler in args.get("kwargs_handlers", []):
            if isinstance(handler, DistributedDataParallelKwargs):
                handler.gradient_as_bucket_view = True
        return args

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator; under FSDP2 the modules of an 8-bit base's integer weights are left out of
        the sharding, whole on every process (ft.model.quantize.held_whole)."""
        super().create_accelerator_and_postprocess()
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if plugin is not None and plugin.fsdp_version == 2:
            from ft.model.quantize import held_whole

            held = held_whole(self.model)
            for module in held:  # torch's distributed state dict saves and loads a module's parameters and buffers;
                # bitsandbytes writes the weight's row scales and their format beside them, as neither: made buffers
                # (the scales' own tensor), so that a checkpoint writes them and resuming reads them back in place
                if getattr(getattr(module, "weight", None), "SCB", None) is not None and "SCB" not in module._buffers:
                    import torch

                    module.register_buffer("SCB", module.weight.SCB)
                    module.register_buffer("weight_format", torch.tensor(0, dtype=torch.uint8))
            if held:
                plugin.ignored_modules = held
                log.info("FSDP2: %d modules of integer 8-bit weights held whole by each process (not sharded)",
                         len(held))

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's optimizer; with LoRA+, its class and settings over PEFT's LoRA+ groups: the B matrices
        (and the adapter's vectors) at ratio × learning_rate, the A matrices at learning_rate."""
        if self.muon and self.optimizer is None:
            from ft.train.muon import Muon, muon_groups

            a = self.args
            import torch

            self.optimizer = Muon(muon_groups(self.model), lr=a.learning_rate, weight_decay=a.weight_decay,
                                  betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon,
                                  ns_dtype=torch.bfloat16 if a.bf16 or a.fp16 else torch.float32)
            return self.optimizer
        if self.loraplus is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        ratio, embedding = self.loraplus
        lr = kwargs.pop("lr")
        extra = {"loraplus_lr_embedding": embedding} if embedding else {}
        self.optimizer = create_loraplus_optimizer(self.model, cls, lr=lr, loraplus_lr_ratio=ratio,
                                                   loraplus_weight_decay=self.args.weight_decay, **kwargs, **extra)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The Trainer's scheduler. Under FSDP2 this is the first point after accelerate has sharded the model and
        before a checkpoint is loaded into it or a step runs: where a base built on the meta device gets each
        process's share of its weights. With cosine_constant_lr_ratio, ft's own schedule."""
        if self.after_sharding is not None:
            from torch.distributed.fsdp import CPUOffloadPolicy

            fill, self.after_sharding = self.after_sharding, None
            fill(self.model, isinstance(self.accelerator.state.fsdp_plugin.cpu_offload, CPUOffloadPolicy))
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        if self.cosine_schedule is None:
            return self._jagged(super().create_scheduler(num_training_steps, optimizer))
        from functools import partial

        from torch.optim.lr_scheduler import LambdaLR

        from ft.train.schedulers import cosine_then_constant

        ratio, floor, quadratic = self.cosine_schedule  # the cosine that stays at its floor from ratio × the steps on
        factor = partial(cosine_then_constant, warmup=self.args.get_warmup_steps(num_training_steps), total=num_training_steps,
                         constant_ratio=ratio, min_ratio=floor, quadratic=quadratic)
        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self._jagged(self.lr_scheduler)

    def _jagged(self, scheduler: Any) -> Any:
        """jagged_restart_steps: the schedule's factors times the jagged restarts' (ft.train.schedulers.jagged)."""
        if self.jagged_restarts is not None:
            from ft.train.schedulers import with_jagged_restarts

            with_jagged_restarts(scheduler, *self.jagged_restarts)
        return scheduler

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """The Trainer's log; an evaluation's logs gain the extra metrics first, so metrics.jsonl, tensorboard and
        metric_for_best_model all see them (the Trainer picks the best checkpoint from this same dict)."""
        if self.eval_extras is not None and "eval_loss" in logs:
            logs.update(self.eval_extras(self.accelerator.unwrap_model(self.model)))
        if "loss" in logs:  # the tokens trained since the last log, counted by the collator (no host sync a step)
            self.state.num_input_tokens_seen += self.summed_over_processes(self.unlogged_tokens)
            self.unlogged_tokens = 0
        super().log(logs, start_time)

    def summed_over_processes(self, count: int) -> int:
        if self.args.world_size <= 1:
            return count
        import torch

        return int(self.accelerator.reduce(torch.tensor(count, device=self.args.device), reduction="sum"))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, then fsynced and marked complete, then old ones rotated out."""
        from ft.train.checkpoints import mark_complete, rotate, unmark

        folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            unmark(folder)  # written again (a run resumed from an older checkpoint): not complete until rewritten
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # under DeepSpeed every rank writes its part
        if self.args.should_save and self.relora is not None:
            self.relora.save(folder)
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)
            rotate(self.args.output_dir, self.keep_checkpoints, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """The final save. Under FSDP2 an adapter is gathered alone (its parameters only, a collective every
        rank joins) and written once by rank 0, whatever the state dict type: the Trainer's own save gathers the
        whole model, frozen base included, to rank 0's CPU (FULL_STATE_DICT), or writes no weights at all
        (SHARDED_STATE_DICT). Checkpoints keep the Trainer's sharded form, which resume reads."""
        model = self.accelerator.unwrap_model(self.model)
        if self.relora is not None and not _internal_call:
            if self.args.should_save:
                self.relora.save_whole(model, output_dir or self.args.output_dir, model.config)
            self.accelerator.wait_for_everyone()
            return None
        if getattr(model, "ft_bottleneck", None) and not _internal_call:
            from ft.model.methods.bottleneck import save

            if self.args.should_save:  # the adapters alone, not the frozen base (checkpoints keep the whole model)
                save(model, output_dir or self.args.output_dir)
            self.accelerator.wait_for_everyone()
            return None
        if self.initial_adapter and not _internal_call:
            # PiSSA / OLoRA took their start out of the base weights: the adapter saved is converted (rank 2r) into
            # a plain LoRA of the original base; checkpoints keep it as trained (resume starts the same way again)
            out = output_dir or self.args.output_dir
            if self.args.should_save:
                model.save_pretrained(out, path_initial_model_for_weight_conversion=self.initial_adapter)
            self.accelerator.wait_for_everyone()
            return None
        if _internal_call or not (self.is_fsdp_enabled and hasattr(model, "peft_config")
                                  and self.accelerator.state.fsdp_plugin.fsdp_version == 2):
            return super().save_model(output_dir, _internal_call)
        out = output_dir or self.args.output_dir
        state = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p.detach()).cpu()
                 for name, p in model.named_parameters() if p.requires_grad}
        if self.args.should_save:
            Path(out).mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out, state_dict=state)
        self.accelerator.wait_for_everyone()

    def planned_steps(self) -> int:
        """The optimizer steps this run trains in all, as the Trainer's loop computes them."""
        return int(self.set_initial_training_values(self.args, self.get_train_dataloader())[-1])

    def finish_from(self, checkpoint: Path) -> Any:
        """The run's state and weights from a checkpoint that already holds its last step (the run was
        stopped during its final save): no step is trained again."""
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # the weights are the engine's own shards: build the engine as train() does, loading them into it
            loader = self.get_train_dataloader()
            self._prepare_for_training(self.set_initial_training_values(self.args, loader)[-1], loader, str(checkpoint))
        else:
            self._load_from_checkpoint(str(checkpoint))
        self.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self._load_best_model()
        losses = [h["loss"] for h in self.state.log_history if "loss" in h]
        return TrainOutput(self.state.global_step, sum(losses) / max(len(losses), 1), {})

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        real = inputs.pop(REAL_TOKENS, None)
        self.token_slots += int(inputs["input_ids"].numel())
        self.largest_batch = max(self.largest_batch, int(inputs["input_ids"].numel()))
        real = real if real is not None else int(inputs["input_ids"].numel())
        self.real_tokens += real
        self.unlogged_tokens += real
        if self.offload is None:
            return super().training_step(model, inputs, num_items_in_batch)
        with self.offload.active():  # the forward's saved tensors go to host memory; backward brings them back
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        """The plain Trainer loss, or the same loss chunked over the final hidden states (ft.train.loss); with
        `eaft`, each token's term weighted by its entropy (from the hidden states, or from the model's logits where
        the chunked loss cannot run)."""
        shifted = self.context_parallel is not None and "labels" in inputs
        if shifted:  # this process's slice of its group's batch (ft.train.context_parallel)
            inputs = self.context_parallel.split(inputs)
            if num_items_in_batch is not None:  # every process of a group counted the same batch
                num_items_in_batch = num_items_in_batch / self.context_parallel.size
        if not (self.chunked_loss or self.eaft or shifted) or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        import torch

        from ft.train.loss import catch_hidden_states, causal_lm_of, chunk_size, chunked_cross_entropy

        causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        # the model would divide by num_items_in_batch only when it accepts loss kwargs; mirror that
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        text = causal_lm.config.get_text_config()
        if self.chunked_loss:
            with catch_hidden_states(causal_lm) as hidden:
                outputs = model(**rest, logits_to_keep=1)
            loss = chunked_cross_entropy(hidden.value, inputs["labels"], causal_lm.get_output_embeddings(),
                                         softcap=getattr(text, "final_logit_softcapping", None), num_items_in_batch=items,
                                         chunk=chunk_size(text.vocab_size), eaft=self.eaft, shifted=shifted)
        else:  # the model's own logits, a chunk of positions at a time
            outputs = model(**rest)
            loss = chunked_cross_entropy(outputs["logits"], inputs["labels"], torch.nn.Identity(), num_items_in_batch=items,
                                         chunk=chunk_size(text.vocab_size), eaft=self.eaft, shifted=shifted)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop(REAL_TOKENS, None)
        return super().prediction_step(model, inputs, *args, **kwargs)


class OwnLossTrainer(FtTrainer):
    """An FtTrainer whose compute_loss is its own all through (preference, distillation): evaluation takes that
    loss too, and keeps no logits."""

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None) -> Any:
        import torch

        inputs = self._prepare_inputs(inputs)
        inputs.pop(REAL_TOKENS, None)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class MeanLossTrainer(OwnLossTrainer):
    """An OwnLossTrainer whose loss is a mean over its micro batch (the Trainer averages micro batches over
    gradient accumulation) and no language model's cross-entropy (preference, EBFT, diffusion), logging the metrics
    each batch hands `_keep`, averaged since the last log."""

    metric_names: tuple[str, ...] = ()
    reports_perplexity = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, dict[str, float]] = {"train": {}, "eval": {}}

    def _keep(self, split: str, metrics: dict[str, Any]) -> None:
        """Sums and counts of each metric since the last log (a metric a batch has no value of, NaN, is not counted:
        KTO's desirable rewards in a batch of undesirable answers)."""
        sums = self._sums[split]
        for name, value in metrics.items():
            value = float(value)
            if value == value:
                sums[name] = sums.get(name, 0.0) + value
                sums["#" + name] = sums.get("#" + name, 0.0) + 1
        sums["_batches"] = sums.get("_batches", 0.0) + 1

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """The Trainer's log, with the means of `metric_names` since the last log, over every batch of every
        process."""
        split = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if split is not None and self._sums[split].get("_batches"):
            import torch

            sums = self._sums[split]
            pooled = torch.tensor([[sums.get(name, 0.0), sums.get("#" + name, 0.0)] for name in self.metric_names],
                                  device=self.args.device)
            pooled = self.accelerator.reduce(pooled, reduction="sum")  # the mean over every batch of every process
            prefix = "eval_" if split == "eval" else ""
            logs.update({prefix + name: round(float(total / count), 6) for name, (total, count) in zip(self.metric_names, pooled)
                         if count > 0})
            self._sums[split] = {}
        super().log(logs, start_time)


def eval_words(summary: dict[str, Any]) -> str:
    """', eval loss 0.41 (perplexity 1.5)' for the run's last line: the perplexity or the reward accuracy, when the
    loss has one."""
    if "eval_loss" not in summary:
        return ""
    extra = (f" (perplexity {summary['perplexity']})" if "perplexity" in summary else
             f" (reward accuracy {summary['eval_reward_accuracy']})" if "eval_reward_accuracy" in summary else "")
    return f", eval loss {summary['eval_loss']}{extra}"


def save_outputs(trainer: Any, tokenizer: Any, metrics: MetricsLog, result: Any, seconds: float, resolved_config: str,
                 facts: dict[str, Any]) -> dict[str, Any]:
    """The adapter or model, tokenizer, resolved config (ft_config.yml), loss plot and summary (with `facts`,
    such as the batch layout and attention kernel) in the Trainer's output_dir; returns the summary."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))
    history = read_history(metrics.path)
    summary: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "final_loss": next((r["loss"] for r in reversed(history) if "loss" in r), None),
        "seconds": round(seconds, 1),
        "tokens": trainer.real_tokens,
        "token_slots": trainer.token_slots,
        "slot_efficiency": round(trainer.real_tokens / trainer.token_slots, 4) if trainer.token_slots else None,
        "largest_batch_slots": trainer.largest_batch,
        "tokens_per_s": round(trainer.real_tokens / max(seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        **facts,
    }
    if trainer.eval_dataset is not None:
        # every process keeps the same log history, so all of them take the same branch (evaluate is collective)
        last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
        if last is not None and last.get("step") == trainer.state.global_step and not trainer.args.load_best_model_at_end:
            evaluation = last  # the run's last step was just evaluated: the same model, the same numbers
        else:
            evaluation = trainer.evaluate()
        summary["eval_loss"] = round(evaluation["eval_loss"], 4)
        if "eval_rewards/accuracies" in evaluation:  # a preference loss is no cross-entropy
            summary["eval_reward_accuracy"] = round(evaluation["eval_rewards/accuracies"], 4)
        elif getattr(trainer, "reports_perplexity", True):
            ce = evaluation.get("eval_ce_loss", evaluation["eval_loss"])  # distillation: the perplexity of the labels
            summary["perplexity"] = round(math.exp(min(ce, 50)), 3)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        plot_losses(history, out / "loss.png")
        for path in out.iterdir():  # the saved model and tokenizer are durable before the run is called done
            if path.is_file():
                fsync_path(path)
        atomic_write_text(out / "ft_config.yml", resolved_config)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))  # last: it says the run finished
        speed = (f"{summary['tokens_per_s']:.0f} tokens/s, {100 * summary['slot_efficiency']:.1f}% of token slots real"
                 if summary["slot_efficiency"] is not None else "no step trained in this process")
        log.info(
            "done: %d steps in %.0f s, train loss %.4f%s, %s, peak memory %.0f MB → %s",
            summary["steps"], seconds, summary["train_loss"],
            eval_words(summary),
            speed, summary["peak_memory_mb"], out,
        )
    return summary
