"""Build the transformers Trainer from the config, and write what a run leaves in output_dir."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from transformers import Trainer

from ft.config import FtConfig
from ft.train.args import training_arguments
from ft.data.packing import efficiency, pack
from ft.train.batches import REAL_TOKENS, PackedBins, PackedCollator, PadCollator, TokenizedRows
from ft.train.callbacks import MetricsLog, peak_memory_mb, plot_losses

log = logging.getLogger("ft")


def build_trainer(cfg: FtConfig, model: Any, tokenizer: Any, prepared: Any, world_size: int) -> tuple[Any, MetricsLog]:
    import torch
    from transformers import EarlyStoppingCallback

    d = cfg.data
    train_rows: Any = TokenizedRows(prepared.train)
    eval_rows: Any = TokenizedRows(prepared.eval) if prepared.eval is not None else None
    if d.sample_packing:
        train_rows = packed(train_rows, d.sequence_len, "train")
        if eval_rows is not None and (d.eval_sample_packing is not False):
            eval_rows = packed(eval_rows, d.sequence_len, "eval")
        pad_to = d.sequence_len * cfg.training.micro_batch_size if d.pad_to_sequence_len else None
        collator: Any = Switch(PackedCollator(tokenizer.pad_token_id, pad_to), PadCollator(tokenizer.pad_token_id))
    else:
        collator = PadCollator(
            tokenizer.pad_token_id,
            pad_to=d.sequence_len if d.pad_to_sequence_len else None,
            multiple_of=8 if torch.cuda.is_available() else 1,
        )
    args = training_arguments(cfg, len(train_rows), eval_rows is not None, world_size)
    Path(cfg.training.output_dir).mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(Path(cfg.training.output_dir) / "metrics.jsonl")
    callbacks: list[Any] = [metrics]
    if cfg.training.early_stopping_patience and eval_rows is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    trainer = FtTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, metrics


class FtTrainer(Trainer):
    """The transformers Trainer, counting the real tokens and the token slots of the training batches."""

    real_tokens = 0
    token_slots = 0
    largest_batch = 0  # token slots of the largest micro batch: what sets the activation memory

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        real = inputs.pop(REAL_TOKENS, None)
        self.token_slots += int(inputs["input_ids"].numel())
        self.largest_batch = max(self.largest_batch, int(inputs["input_ids"].numel()))
        self.real_tokens += int(real) if real is not None else int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop(REAL_TOKENS, None)
        return super().prediction_step(model, inputs, *args, **kwargs)


def packed(rows: TokenizedRows, capacity: int, split: str) -> PackedBins:
    bins = pack(rows.lengths, capacity)
    log.info(
        "packing %s: %d rows into %d bins of at most %d tokens, efficiency %.3f (real tokens / bin slots)",
        split, len(rows), len(bins), capacity, efficiency(rows.lengths, bins, capacity),
    )
    return PackedBins(rows, bins)


class Switch:
    """Collates packed bins with one collator and plain rows (unpacked evaluation) with another."""

    def __init__(self, packed_collator: PackedCollator, plain: PadCollator) -> None:
        self.packed_collator, self.plain = packed_collator, plain

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.packed_collator(items) if "rows" in items[0] else self.plain(items)


def save_outputs(cfg: FtConfig, trainer: Any, tokenizer: Any, metrics: MetricsLog, result: Any, seconds: float) -> dict[str, Any]:
    """The adapter or model, tokenizer, resolved config, loss plot and summary; returns the summary."""
    from ft.describe import resolved_yaml

    out = Path(cfg.training.output_dir)
    trainer.save_model(str(out))
    summary: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "final_loss": next((r["loss"] for r in reversed(metrics.records) if "loss" in r), None),
        "seconds": round(seconds, 1),
        "tokens": trainer.real_tokens,
        "token_slots": trainer.token_slots,
        "slot_efficiency": round(trainer.real_tokens / max(trainer.token_slots, 1), 4),
        "largest_batch_slots": trainer.largest_batch,
        "tokens_per_s": round(trainer.real_tokens / max(seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    if trainer.eval_dataset is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        summary["eval_loss"] = round(eval_loss, 4)
        summary["perplexity"] = round(math.exp(min(eval_loss, 50)), 3)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        (out / "ft_config.yml").write_text(resolved_yaml(cfg))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_losses(metrics.records, out / "loss.png")
        log.info(
            "done: %d steps in %.0f s, train loss %.4f%s, %.0f tokens/s, %.1f%% of token slots real, peak memory %.0f MB → %s",
            summary["steps"], seconds, summary["train_loss"],
            f", eval loss {summary['eval_loss']} (perplexity {summary['perplexity']})" if "eval_loss" in summary else "",
            summary["tokens_per_s"], 100 * summary["slot_efficiency"], summary["peak_memory_mb"], out,
        )
    return summary
