"""The Trainer of a distillation run: FtTrainer whose loss is ft.train.distill's, the teacher live beside the
model or its top-k read from the cache, with the distillation and cross-entropy terms logged apart."""

from __future__ import annotations

from typing import Any, Optional

from ft.config.distillation import DistillationConfig
from ft.train.batches import ROW_IDS
from ft.train.distill import TERMS, distillation_loss
from ft.train.trainer import OwnLossTrainer


class DistillTrainer(OwnLossTrainer):
    distillation: DistillationConfig
    teacher: Any = None  # the live teacher (None with kd_cache)
    teacher_cache: Any = None  # ft.train.distill_cache.TeacherCache with kd_cache
    vocab: int = 0  # the vocabulary both models share

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the loss divides by the step's trained tokens (num_items_in_batch) itself, as ft's cross-entropy does
        self.model_accepts_loss_kwargs = True
        self._sums: dict[str, list[float]] = {"train": [0.0, 0.0, 0.0], "eval": [0.0, 0.0, 0.0]}

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        import torch

        from ft.train.loss import catch_hidden_states, causal_lm_of, chunk_size

        k = self.distillation
        split = "train" if model.training else "eval"
        rows = inputs.pop(ROW_IDS, None)
        labels = inputs["labels"]
        rest = {key: v for key, v in inputs.items() if key != "labels"}
        causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
        text = causal_lm.config.get_text_config()
        with catch_hidden_states(causal_lm) as hidden:
            model(**rest, logits_to_keep=1)
        live: dict[str, Any] = {}
        if self.teacher_cache is not None:
            live["cached"] = self.teacher_cache.for_batch(split, rows, labels, k.kd_top_k)
        else:
            with torch.no_grad(), catch_hidden_states(self.teacher) as teacher_hidden:
                self.teacher(**rest, logits_to_keep=1)
            teacher_text = self.teacher.config.get_text_config()
            live.update(teacher_hidden=teacher_hidden.value, teacher_head=self.teacher.get_output_embeddings(),
                        teacher_softcap=getattr(teacher_text, "final_logit_softcapping", None), top_k=k.kd_top_k)
        loss, sums, count = distillation_loss(
            hidden.value, labels, causal_lm.get_output_embeddings(), vocab=self.vocab, temperature=k.kd_temperature,
            beta=k.kd_beta, alpha=k.kd_alpha, ce_alpha=k.ce_weight, softcap=getattr(text, "final_logit_softcapping", None),
            num_items_in_batch=num_items_in_batch, chunk=chunk_size(text.vocab_size), **live)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does: DDP averages the gradients
        kept = self._sums[split]
        kept[0], kept[1], kept[2] = kept[0] + float(sums[0]), kept[1] + float(sums[1]), kept[2] + count
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """The Trainer's log, with the distillation and cross-entropy terms per trained token since the last log,
        summed over processes (kd_loss, ce_loss; eval_kd_loss, eval_ce_loss)."""
        split = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if split is not None and self._sums[split][2]:
            import torch

            totals = self.accelerator.reduce(torch.tensor(self._sums[split], device=self.args.device, dtype=torch.float64),
                                             reduction="sum")
            prefix = "eval_" if split == "eval" else ""
            logs.update({prefix + name: round(float(totals[i] / totals[2]), 6) for i, name in enumerate(TERMS)})
            self._sums[split] = [0.0, 0.0, 0.0]
        super().log(logs, start_time)


