"""`ft train`: config → data → model → train → save, top to bottom.

`build_run` is the whole composition up to the first step; `run_train` trains and saves. The tests build
their runs with `build_run` too, so they exercise exactly what `ft train` does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ft.commands.preprocess import prepare_data
from ft.config import FtConfig, resolved_yaml
from ft.errors import UserError
from ft.launch.backend import check_launch, report_backend, shards_whole_modules, trainer_arguments, world_size

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
    from ft.train.batches import batch_layout, training_sets
    from ft.train.trainer import build_trainer

    d, t = cfg.data, cfg.training
    on_gpu = torch.cuda.is_available()
    layout = batch_layout(d, t.group_by_length, on_gpu)
    torch.manual_seed(t.seed)

    # data
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, tokenizer)
    log.info(report(prepared, d.sequence_len))

    # model
    model, attention = model_for_training(cfg, tokenizer, layout)

    # trainer
    sets = training_sets(d, layout, t.micro_batch_size, prepared, tokenizer.pad_token_id, on_gpu)
    args = training_arguments(t, cfg.logging, cfg.model, len(sets.train), sets.eval is not None, world,
                              trainer_arguments(cfg.distributed, world))
    chunked = t.chunked_cross_entropy and uses_chunked_loss(model, shards_whole_modules(cfg.distributed, world))
    offload = None
    if t.activation_offloading:
        from ft.train.offload import ActivationOffload

        offload = ActivationOffload()
    trainer, metrics = build_trainer(model, tokenizer, args, sets, t.early_stopping_patience, chunked_loss=chunked, offload=offload)
    return Run(tokenizer, prepared, model, trainer, metrics, layout, attention)


def model_for_training(cfg: FtConfig, tokenizer: Any, layout: str) -> tuple[Any, str]:
    """The base model, its attention switched for flattened (packed or padding-free) batches, checkpointing
    on, quantized layers prepared and the adapter applied: what the Trainer gets; and the attention kernel."""
    from ft.model.adapter import apply_adapter
    from ft.model.load import load_model, prepare_for_training, use_packed_attention
    from ft.train.batches import PADDED

    m, q, a, t = cfg.model, cfg.quantization, cfg.adapter, cfg.training
    fsdp = bool(cfg.distributed.fsdp)
    model, grew = load_model(m, q, tokenizer, full=a.adapter is None, fsdp=fsdp)
    attention = use_packed_attention(model, layout) if layout != PADDED else ""
    if t.tiled_mlp:
        from ft.model.tiled_mlp import tile_mlps

        tile_mlps(model, t.tiled_mlp_tokens)
    model = prepare_for_training(model, q, checkpointing=t.gradient_checkpointing, adapter=bool(a.adapter))
    return (apply_adapter(a, model, grew) if a.adapter else model), attention


def uses_chunked_loss(model: Any, sharding: str) -> bool:
    """Whether this model can take the chunked loss; says why not when it cannot."""
    from ft.train.loss import causal_lm_of, chunked_loss_refusal

    why = chunked_loss_refusal(causal_lm_of(model).config.model_type, sharding)
    if why:
        log.info("chunked cross-entropy off: %s; the plain loss builds the whole logits", why)
    return why is None


def run_train(cfg: FtConfig) -> dict[str, Any]:
    import torch

    from ft.train.checkpoints import resume_point
    from ft.train.trainer import save_outputs

    world = world_size()
    check_launch(cfg.distributed, world)
    run = build_run(cfg, world)
    report_backend(cfg.distributed, run.trainer, world)

    # train
    t = cfg.training
    checkpoint = resume_point(t.resume_from_checkpoint, t.auto_resume_from_checkpoints, t.output_dir)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    try:
        result = run.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.OutOfMemoryError:
        raise UserError(
            "out of memory: turn on gradient_checkpointing, lower micro_batch_size (raise "
            "gradient_accumulation_steps to keep the batch), shorten sequence_len, or use adapter: qlora"
        ) from None

    # save
    facts = {"batches": run.layout, "attention": run.attention or str(run.model.config._attn_implementation)}
    return save_outputs(run.trainer, run.tokenizer, run.metrics, result, time.perf_counter() - started, resolved_yaml(cfg), facts)
