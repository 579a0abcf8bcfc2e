"""`ft train`: config → data → model → train → save, top to bottom."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Any

from ft.config import FtConfig
from ft.errors import UserError

log = logging.getLogger("ft")


def run_train(cfg: FtConfig) -> dict[str, Any]:
    import torch

    from ft.data.prepare import prepare, report
    from ft.model.adapter import apply_adapter
    from ft.model.load import load_model
    from ft.model.tokenizer import load_tokenizer
    from ft.train.trainer import build_trainer, save_outputs
    from ft.train.checkpoints import resume_point

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.distributed.deepspeed and world_size > 1 and importlib.util.find_spec("deepspeed") is None:
        raise UserError("`deepspeed` is set, but the deepspeed package is not installed: pip install 'ft[deepspeed]'")
    if cfg.distributed.backend and world_size == 1:
        log.warning("%s is set, but this is one process: training without it (use `accelerate launch -m ft train`)",
                    cfg.distributed.backend)
    torch.manual_seed(cfg.training.seed)

    # data
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg, tokenizer)
    log.info(report(prepared, cfg.data.sequence_len))

    # model
    model, new_tokens = load_model(cfg, tokenizer)
    if cfg.adapter.adapter:
        model = apply_adapter(cfg.adapter, model, new_tokens)

    # train
    trainer, metrics = build_trainer(cfg, model, tokenizer, prepared, world_size)
    if world_size > 1:
        report_backend(cfg, trainer, world_size)
    checkpoint = resume_point(cfg.training.resume_from_checkpoint, cfg.training.auto_resume_from_checkpoints, cfg.training.output_dir)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.OutOfMemoryError:
        raise UserError(
            "out of memory: turn on gradient_checkpointing, lower micro_batch_size (raise "
            "gradient_accumulation_steps to keep the batch), shorten sequence_len, or use adapter: qlora"
        ) from None

    # save
    summary = save_outputs(cfg, trainer, tokenizer, metrics, result, time.perf_counter() - started)
    return summary


def report_backend(cfg: FtConfig, trainer: Any, world_size: int) -> None:
    """Say which data-parallel backend accelerate really set up, and warn when it is not the one asked for."""
    if trainer.is_deepspeed_enabled:
        active = f"DeepSpeed ZeRO stage {trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    elif trainer.is_fsdp_enabled:
        active = f"FSDP{trainer.accelerator.state.fsdp_plugin.fsdp_version} ({' '.join(cfg.distributed.fsdp)})"
    else:
        active = "DDP"
    log.info("distributed: %d processes, %s", world_size, active)
    wanted = cfg.distributed.backend
    if wanted == "fsdp" and not trainer.is_fsdp_enabled or wanted == "deepspeed" and not trainer.is_deepspeed_enabled:
        why = " (it runs FSDP on GPUs only)" if wanted == "fsdp" else ""
        log.warning("%s is set, but accelerate did not turn it on%s: this run is plain DDP, every process "
                    "holding the whole model", wanted, why)
