"""DeepSpeed JSON: resolve a path or an inline block, and reject what DeepSpeed would silently ignore."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft.registry import did_you_mean

# DeepSpeed's top-level keys. DeepSpeed ignores a key it does not know, so a misspelt `zero_optimization`
# silently trains without ZeRO; ft rejects any other key, naming the nearest one.
DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer", "scheduler",
    "fp16", "bf16", "amp", "gradient_clipping", "prescale_gradients", "gradient_predivide_factor",
    "sparse_gradients", "zero_optimization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "activation_checkpointing", "aio", "flops_profiler", "wall_clock_breakdown", "memory_breakdown",
    "steps_per_print", "dump_state", "tensorboard", "wandb", "csv_monitor", "comms_logger",
    "communication_data_type", "elasticity", "autotuning", "data_efficiency", "checkpoint", "data_types",
    "pipeline", "torch_autocast", "compile", "seq_parallel_communication_data_type", "bfloat16",
    "sequence_parallel_size", "timers", "nebula", "weight_quantization", "hybrid_engine", "curriculum_learning",
    "progressive_layer_drop", "quantize_training", "eigenvalue", "dataloader_drop_last", "disable_allgather", "comet",
    "zero_optimization_stage", "optimizer_legacy_fusion", "graph_harvesting", "use_data_before_expert_parallel_",
)


def check_deepspeed(value: str | dict[str, Any]) -> None:
    """The `deepspeed:` value is usable: a file that exists, parses and has no misspelt top-level key, or
    such an inline mapping. Raises ValueError naming the file, line or key (config validation shows it at
    the `deepspeed:` line)."""
    if isinstance(value, dict):
        check_keys(value, "the inline deepspeed block")
    else:
        check_keys(read_json(value), value)


def zero_stage(value: str | dict[str, Any]) -> int:
    """The ZeRO stage a `deepspeed:` value (file or inline mapping) asks for (0 when none)."""
    return int(_stage(value if isinstance(value, dict) else read_json(value)))


def zero3(value: Any) -> bool:
    """Whether a `deepspeed:` value (unset, file or inline mapping) asks for ZeRO-3."""
    return bool(value) and zero_stage(value) == 3


def _stage(data: dict[str, Any]) -> Any:
    zero = data.get("zero_optimization")
    return zero.get("stage", 0) if isinstance(zero, dict) else 0


def read_json(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"DeepSpeed file `{path}` not found; ft ships zero1/zero2/zero3/zero3_offload/zero3_offload_params.json in deepspeed_configs/")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object")
    return data


def check_keys(data: dict[str, Any], where: str) -> None:
    for key in data:
        if key in DEEPSPEED_KEYS:
            continue
        by_case = next((k for k in DEEPSPEED_KEYS if k.lower() == str(key).lower()), None)
        hint = f" (did you mean `{by_case}`?)" if by_case else did_you_mean(str(key), DEEPSPEED_KEYS)
        raise ValueError(f"`{key}` in {where} is not a DeepSpeed key, and DeepSpeed would ignore it{hint or '; remove it'}")
    stage = _stage(data)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage in {where} is {stage!r}; DeepSpeed has stages 0, 1, 2 and 3")
