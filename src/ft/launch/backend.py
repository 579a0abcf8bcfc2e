"""The launcher's side of a run: how many processes, what must be installed, which backend really ran."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from ft.config.distributed import DistributedConfig
from ft.errors import ConfigError, UserError

log = logging.getLogger("ft")


# Caches the libraries ft uses would otherwise write under $HOME or $TMPDIR: matplotlib's font list (the
# loss plot), torch inductor's folder (peft and bitsandbytes import it), triton's kernels (GPU).
CACHE_VARIABLES = {"MPLCONFIGDIR": "matplotlib", "TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton"}


def keep_caches_in(output_dir: str) -> None:
    """Point the libraries' caches into output_dir/.cache, so a run writes only in output_dir (and the
    prepared-data cache, and the hub's cache when it downloads); a cache the user set stays theirs."""
    root = Path(output_dir).resolve() / ".cache"
    for variable, name in CACHE_VARIABLES.items():
        os.environ.setdefault(variable, str(root / name))


def world_size() -> int:
    """Processes in this run, as accelerate launch and torchrun tell each of them (1 under plain python)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(d: DistributedConfig, world: int) -> None:
    """Before anything loads: the backend's package is installed, and a backend set on one process is said."""
    if d.deepspeed and world > 1 and importlib.util.find_spec("deepspeed") is None:
        raise UserError("`deepspeed` is set, but the deepspeed package is not installed: pip install 'ft[deepspeed]'")
    if d.backend and world == 1:
        log.warning("%s is set, but this is one process: training without it (use `accelerate launch -m ft train`)", d.backend)


TRACKER_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",),
                    "comet_ml": ("comet_ml",)}


def check_trackers(trackers: tuple[str, ...]) -> None:
    """Before anything loads: each tracker the run logs to has its package installed (the Trainer would stop with
    a traceback when it builds the tracker's callback)."""
    for name in trackers:
        packages = TRACKER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            asked = "`wandb_project` is set" if name == "wandb" else f"`report_to` names {name}"
            raise UserError(f"{asked}, but the {packages[0]} package is not installed: pip install {packages[0]}, or "
                            f"remove it (ft logs to metrics.jsonl{' and tensorboard' if name != 'tensorboard' else ''} "
                            "anyway)")


def trainer_arguments(d: DistributedConfig, world: int) -> dict[str, Any]:
    """The distributed settings for TrainingArguments: DDP's, and DeepSpeed's or FSDP's when several
    processes run."""
    out: dict[str, Any] = {"ddp_timeout": d.ddp_timeout or 1800, "ddp_find_unused_parameters": d.ddp_find_unused_parameters}
    if not d.backend or world == 1:
        return out
    if d.deepspeed:
        reduce_through_gloo_on_cpu()
        return {**out, "deepspeed": d.deepspeed}
    from ft.launch.fsdp import fsdp_flag, library_fsdp_config

    return {**out, "fsdp": fsdp_flag(d), "fsdp_config": library_fsdp_config(d)}


def reduce_through_gloo_on_cpu() -> None:
    """DeepSpeed on CPU processes (no CUDA) would compile its shared-memory all-reduce, a C++ extension (a minute
    of both cores, written under $HOME), when it starts; its collectives go through gloo instead, as without it.
    (DeepSpeed keeps the table of ops it may build in one dict, made to be edited.)"""
    import torch

    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def shards_whole_modules(d: DistributedConfig, world: int) -> str:
    """The backend, if any, under which a module's weights are whole only inside the model's forward pass
    (FSDP, DeepSpeed ZeRO-3); "" when weights are whole all along."""
    from ft.launch.deepspeed import zero_stage

    if world == 1:
        return ""
    if d.fsdp:
        return "FSDP"
    if d.deepspeed and zero_stage(d.deepspeed) == 3:
        return "DeepSpeed ZeRO-3"
    return ""


def check_fsdp_wrap(d: DistributedConfig, model: Any) -> None:
    """The decoder layer class FSDP is told to wrap exists in this model (else FSDP wraps nothing, silently)."""
    wanted = d.fsdp_config.fsdp_transformer_layer_cls_to_wrap
    if not d.fsdp or not wanted:
        return
    classes = {type(m).__name__ for m in model.modules()}
    missing = [name for name in wanted.split(",") if name.strip() not in classes]
    if missing:
        layers = sorted(c for c in classes if c.endswith("DecoderLayer")) or sorted(classes)[:10]
        raise ConfigError(f"`fsdp_config.fsdp_transformer_layer_cls_to_wrap`: {', '.join(missing)} is not a layer of "
                          f"this model; its decoder layer class is {', '.join(layers)}")


def end_processes() -> None:
    """Close the process group once every rank is done. Left to the interpreter's exit, gloo's threads are
    sometimes still joinable when their objects die, and a rank aborts ("terminate called without an active
    exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def report_backend(d: DistributedConfig, trainer: Any, world: int) -> None:
    """Say which data-parallel backend accelerate really set up, and warn when it is not the one asked for."""
    if world == 1:
        return
    if trainer.is_deepspeed_enabled:
        active = f"DeepSpeed ZeRO stage {trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    elif trainer.is_fsdp_enabled:
        active = f"FSDP{trainer.accelerator.state.fsdp_plugin.fsdp_version} ({' '.join(d.fsdp)})"
    else:
        active = "DDP"
    log.info("distributed: %d processes, %s", world, active)
    wanted = d.backend
    if wanted == "fsdp" and not trainer.is_fsdp_enabled or wanted == "deepspeed" and not trainer.is_deepspeed_enabled:
        why = " (it runs FSDP on GPUs only)" if wanted == "fsdp" else ""
        log.warning("%s is set, but accelerate did not turn it on%s: this run is plain DDP, every process "
                    "holding the whole model", wanted, why)
