"""`ft plan`: will this config fit, and what to change if it will not. Reads the config and the model's
config.json only: no weights, no torch; it answers in well under 2 seconds."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
from typing import Any, Optional

from ft.config import FtConfig
from ft.errors import ConfigError
from ft.plan.advice import _with, fewest_checkpointed_layers, largest_settings, longest_batch, ranked_changes
from ft.plan.estimate import GiB, estimate
from ft.plan.shapes import read_shape

DEFAULT_MEMORY = 24 * GiB
log = logging.getLogger("ft")


def parse_memory(text: str) -> int:
    """'24GB', '24 GiB', '80G', '48000MB' → bytes (GB and GiB both read as GiB, as GPUs are sold)."""
    found = re.fullmatch(r"\s*([\d.]+)\s*([GMT]?)i?B?\s*", text, re.I)
    if not found:
        raise ConfigError(f"command line: --gpu-memory {text}: write a size such as 24GB or 80GiB")
    unit = {"": GiB, "G": GiB, "M": 1 << 20, "T": 1 << 40}[found.group(2).upper()]
    return int(float(found.group(1)) * unit)


def local_gpu_memory() -> Optional[int]:
    """The first GPU's memory as nvidia-smi reports it (no torch import), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout.split()
        return int(float(out[0])) << 20 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def real_longest_batch(cfg: FtConfig) -> Optional[int]:
    """The largest micro batch's token slots with the prepared data's own lengths (when `ft preprocess` has
    cached them) and the batching a GPU run uses; None when the data is not at hand."""
    from ft.data.packing import batch_layout
    from ft.data.prepare import cached

    prepared = cached(cfg.data, cfg.model, cfg.training.seed, cfg.prepared_dir)
    if prepared is None:
        return None
    lengths = [int(n) for n in prepared.train.column("input_ids").combine_chunks().value_lengths().to_numpy()]
    layout = batch_layout(cfg.data, cfg.training.group_by_length, on_gpu=True)
    if cfg.preference.reward_model:  # a pair's two rows padded in a micro batch of 2 × micro_batch_size rows
        from ft.data.packing import PADDED

        return longest_batch(lengths, PADDED, 2 * cfg.training.micro_batch_size, cfg.data.sequence_len,
                             cfg.data.pad_to_sequence_len)
    if cfg.preference.pairs_method:  # a pair (rows 2k, 2k+1) is one item; its answers lie end to end without padding
        from ft.data.packing import PADDING_FREE

        lengths, layout = [a + b for a, b in zip(lengths[0::2], lengths[1::2])], PADDING_FREE
    return longest_batch(lengths, layout, cfg.training.micro_batch_size, cfg.data.sequence_len, cfg.data.pad_to_sequence_len)


def plan_report(cfg: FtConfig, memory: int, gpus: int, real_lengths: bool = True) -> dict[str, Any]:
    """Everything `ft plan` says, as data: the worst case (every row at sequence_len), and with the prepared
    data's real lengths when they are at hand."""
    shape = read_shape(cfg.model.base_model_config or cfg.model.base_model)
    k = cfg.distillation
    if k.on and not k.kd_cache:
        shape = dataclasses.replace(shape, teacher=read_shape(k.teacher_model))
    plan = estimate(cfg, shape, gpus)
    report: dict[str, Any] = {
        "model": f"{shape.model_type}, {shape.total_params() / 1e9:.2f}B parameters", "gpus": gpus, "gpu_memory": memory,
        "tokens_per_micro_batch": plan.micro_batch, "tokens_per_gpu": plan.tokens, "parts": plan.parts,
        "host": plan.host, "allocated": plan.allocated,
        "peak": plan.peak, "fits": plan.peak <= memory, "notes": plan.notes,
    }
    if not report["fits"]:
        report["changes"] = [{"change": c.what, "peak": c.plan.peak, "fits": c.plan.peak <= memory}
                             for c in ranked_changes(cfg, shape, gpus, plan)]
    report["largest_micro_batch_size"], report["largest_sequence_len"] = largest_settings(cfg, shape, gpus, memory)
    if cfg.training.gradient_checkpointing and not cfg.training.activation_offloading:
        report["fewest_checkpointed_layers"] = fewest_checkpointed_layers(cfg, shape, gpus, memory)
        report["layers"] = shape.layers
    if cfg.training.gradient_checkpointing and not cfg.training.selective_checkpointing:
        selective = estimate(_with(cfg, training={"selective_checkpointing": True}), shape, gpus)
        if selective.peak > plan.peak:  # the layers keep something (not a model's own eager attention)
            report["selective_peak"] = selective.peak
    real = real_longest_batch(cfg) if real_lengths else None
    if real is not None:
        with_data = estimate(cfg, shape, gpus, real)
        report["with_data"] = {"tokens_per_micro_batch": real, "peak": with_data.peak, "fits": with_data.peak <= memory}
    return report


def auto_checkpointed_layers(cfg: FtConfig, gpus: int) -> Optional[int]:
    """gradient_checkpointing_layers: auto, at the start of a run: the fewest layers recomputed whose plan fits
    what this process may hold on its GPU (the free memory and what it holds already); None (every layer) without
    a GPU, or when not even every layer fits."""
    import torch

    shape = read_shape(cfg.model.base_model_config or cfg.model.base_model)
    if not torch.cuda.is_available():
        log.info("gradient_checkpointing_layers: auto: every layer recomputed (no GPU memory to fit)")
        return None
    free, _ = torch.cuda.mem_get_info()
    budget = free + torch.cuda.memory_reserved()
    count = fewest_checkpointed_layers(cfg, shape, gpus, budget)
    if count is None:
        log.warning("gradient_checkpointing_layers: auto: not even every layer recomputed fits %s by ft plan's count; "
                    "recomputing every layer", gib(budget))
    else:
        log.info("gradient_checkpointing_layers: auto: the first %d of %d layers recomputed fit %s by ft plan's count",
                 count, shape.layers, gib(budget))
    return count


def filled_micro_batch(cfg: FtConfig, gpus: int) -> FtConfig:
    """fill_micro_batch, at the start of a run: the config with the most rows (bins) per micro batch whose plan fits
    what this process may hold on its GPU, gradient_accumulation_steps lowered by the same factor (the same rows per
    optimizer step and, as ft normalizes the loss by the step's tokens, the same gradients); as written without a GPU."""
    import torch

    from ft.plan.advice import fullest_micro_batch

    t = cfg.training
    if not torch.cuda.is_available():
        log.info("fill_micro_batch: micro_batch_size %d as written (no GPU memory to fill)", t.micro_batch_size)
        return cfg
    free, _ = torch.cuda.mem_get_info()
    budget = free + torch.cuda.memory_reserved()
    size, steps = fullest_micro_batch(cfg, read_shape(cfg.model.base_model_config or cfg.model.base_model), gpus, budget)
    if size == t.micro_batch_size:
        log.info("fill_micro_batch: micro_batch_size %d as written (no larger one fits %s by ft plan's count)", size, gib(budget))
        return cfg
    log.info("fill_micro_batch: micro_batch_size %d × gradient_accumulation_steps %d instead of %d × %d (the same rows a "
             "step) fit %s by ft plan's count", size, steps, t.micro_batch_size, t.gradient_accumulation_steps, gib(budget))
    return _with(cfg, training={"micro_batch_size": size, "gradient_accumulation_steps": steps})


def run_plan(cfg: FtConfig, gpu_memory: Optional[str], gpus: int, as_json: bool) -> dict[str, Any]:
    memory = parse_memory(gpu_memory) if gpu_memory else local_gpu_memory() or DEFAULT_MEMORY
    report = plan_report(cfg, memory, gpus)
    if as_json:
        print(json.dumps(report, indent=1))
        return report
    where = f"{gpus} GPUs of {gib(memory)}" if gpus > 1 else f"one GPU of {gib(memory)}"
    split = "" if report["tokens_per_gpu"] == report["tokens_per_micro_batch"] else \
        f", {report['tokens_per_gpu']:,} per GPU (context parallelism)"
    print(f"{report['model']}; micro batch of {report['tokens_per_micro_batch']:,} tokens (every row at sequence_len)"
          f"{split}; {where}")
    print("per GPU:")
    overhead = "allocator overhead, CUDA context" + (", NCCL" if gpus > 1 else "")
    width = max(len(name) for name in [*report["parts"], overhead])  # the figures in one column
    for name, size in report["parts"].items():
        if size:
            print(f"  {name:<{width}} {gib(size):>10}")
    print(f"  {overhead:<{width}} {gib(report['peak'] - report['allocated']):>10}")
    print(f"  {'peak':<{width}} {gib(report['peak']):>10}   {'fits' if report['fits'] else 'does NOT fit'}")
    for name, size in report["host"].items():
        print(f"host memory: {name} {gib(size)}")
    for note in report["notes"]:
        print(f"note: {note}")
    if not report["fits"]:
        print("changes, most memory saved first:")
        for c in report["changes"][:8]:
            print(f"  {c['change']:<60} {gib(c['peak']):>10}  {'fits' if c['fits'] else ''}")
    data = report.get("with_data")
    if data:
        print(f"with the prepared data's lengths (largest micro batch {data['tokens_per_micro_batch']:,} tokens): peak "
              f"{gib(data['peak'])}, {'fits' if data['fits'] else 'does NOT fit'}")
    else:
        print("planned for every row at sequence_len; `ft preprocess` first plans for the data's real lengths too")
    print(f"largest micro_batch_size that fits: {report['largest_micro_batch_size'] or 'none'}; "
          f"largest sequence_len at micro batch 1: {report['largest_sequence_len'] or 'none'}")
    if report.get("fewest_checkpointed_layers") == 0:
        print("gradient checkpointing: not needed to fit; without it (or gradient_checkpointing_layers: 0) no layer is "
              "recomputed")
    elif report.get("fewest_checkpointed_layers") is not None:
        print(f"gradient checkpointing: the first {report['fewest_checkpointed_layers']} of {report['layers']} layers "
              "recomputed fit (gradient_checkpointing_layers: that number, or auto to choose at the start); the others "
              "keep their activations and skip the recompute")
    if report.get("selective_peak") and report["selective_peak"] <= memory:
        print(f"selective_checkpointing: true fits too (peak {gib(report['selective_peak'])}): the recomputed layers "
              "keep their attention outputs, and the backward pass does not run attention again")
    return report
