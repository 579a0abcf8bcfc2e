"""`distributed` section: DeepSpeed or FSDP settings for `accelerate launch -m ft train`."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ft.config.base import Section
from ft.config.context import context_of

# FSDP1-only keys, and what FSDP2 does instead (for the error that names them)
FSDP1_KEYS = {
    "fsdp_sync_module_states": "broadcasts rank 0's weights with `fsdp_cpu_ram_efficient_loading: true`",
    "fsdp_use_orig_params": "always keeps the original parameters",
    "fsdp_backward_prefetch": "prefetches on its own",
    "fsdp_forward_prefetch": "prefetches on its own",
    "fsdp_limit_all_gathers": "bounds its all-gathers on its own",
}
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap")


class FsdpConfig(Section):
    """`fsdp_config:`. Keys may be written with or without the `fsdp_` prefix (both spellings exist in the wild)."""

    fsdp_version: Literal[1, 2] = Field(
        2, description="2: fully_shard, per-parameter sharding (transformers' default); 1: FullyShardedDataParallel "
        "(deprecated there). Not written, with a key only FSDP1 reads set (an Axolotl config's): 1, as Axolotl reads it.")
    fsdp_offload_params: bool = Field(False, description="Keep parameters and gradients in CPU memory (transformers' `cpu_offload`).")
    fsdp_cpu_ram_efficient_loading: bool = Field(
        False, description="Load weights on rank 0 only and broadcast them (needs sync_module_states)."
    )
    fsdp_sync_module_states: Optional[bool] = Field(None, description="Broadcast rank 0's weights at start.")
    fsdp_use_orig_params: Optional[bool] = Field(None, description="Keep original parameters (needed by PEFT on FSDP1).")
    fsdp_state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="How checkpoints are written."
    )
    fsdp_auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] = Field(
        "TRANSFORMER_BASED_WRAP", description="How modules are grouped into FSDP units."
    )
    fsdp_transformer_layer_cls_to_wrap: Optional[str] = Field(
        None, description="Decoder layer class to wrap, e.g. LlamaDecoderLayer (default: the model's own)."
    )
    fsdp_min_num_params: Optional[int] = Field(None, ge=1, description="SIZE_BASED_WRAP threshold.")
    fsdp_backward_prefetch: Optional[Literal["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"]] = Field(
        None, description="When to fetch the next unit's weights in the backward pass."
    )
    fsdp_forward_prefetch: Optional[bool] = Field(None, description="Fetch the next unit's weights early in the forward pass.")
    fsdp_limit_all_gathers: Optional[bool] = Field(None, description="FSDP1: rate-limit all-gathers (less memory).")
    fsdp_activation_checkpointing: bool = Field(False, description="Checkpoint activations through FSDP.")
    fsdp_reshard_after_forward: Optional[bool] = Field(None, description="FSDP2: free gathered weights after forward.")
    fsdp_sharding_strategy: Optional[Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2", "NO_SHARD",
                                             "full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard"]] = Field(
        None, description="The sharding strategy; normally given in `fsdp:` (FSDP2: full_shard or shard_grad_op).")

    @model_validator(mode="before")
    @classmethod
    def _prefix(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): v for k, v in data.items()}
            if "fsdp_version" not in data and any(data.get(k) is not None for k in FSDP1_KEYS):
                data["fsdp_version"] = 1  # Axolotl's default version, which its FSDP1 keys assume
        return data

    @model_validator(mode="after")
    def _read_by_this_version(self) -> "FsdpConfig":
        """A key the chosen FSDP version does not read would be dropped silently by transformers."""
        if self.fsdp_version == 2:
            for key in FSDP1_KEYS:
                if key in self.model_fields_set and getattr(self, key) is not None:
                    raise ValueError(f"`{key}` is read only by FSDP1 (`fsdp_version: 1`); FSDP2 {FSDP1_KEYS[key]}")
            strategy = self.fsdp_sharding_strategy
            if strategy and strategy.lower() not in ("full_shard", "shard_grad_op"):
                raise ValueError(f"`fsdp_sharding_strategy: {strategy}` needs `fsdp_version: 1`; FSDP2 shards "
                                 "full_shard or shard_grad_op")
        return self


class DistributedConfig(Section):
    deepspeed: Optional[str | dict[str, Any]] = Field(
        None, description="DeepSpeed JSON: a path (see deepspeed_configs/) or the JSON object inline."
    )
    fsdp: tuple[str, ...] = Field((), description="FSDP options, e.g. [full_shard, auto_wrap], or one string. Not "
                                  "written, an fsdp_config with settings means [its sharding_strategy or full_shard, "
                                  "auto_wrap] (Axolotl's reading).")
    fsdp_config: FsdpConfig = Field(default_factory=FsdpConfig, description="FSDP settings (fsdp_config: block).")
    dp_shard_size: Optional[int] = Field(
        None, ge=1, description="FSDP: the processes each weight is sharded over (Axolotl's N-D parallelism key). ft "
        "shards over every process, so it must equal their number (checked at the start).")
    num_processes: Optional[int] = Field(
        None, ge=1, description="Processes `ft train` launches on this machine when the command line gives no "
        "--num-processes (Axolotl's `ray_num_workers` with `use_ray`). Launched by accelerate or torchrun, their "
        "count rules.")
    context_parallel_size: Optional[int] = Field(
        None, ge=1, description="Context parallelism: groups of this many processes train each micro batch as one "
        "sequence split between them (each holds 1/N of its tokens' activations; keys and values gathered in every "
        "attention layer). The processes must be a multiple of it (docs/distributed.md).")
    ddp_timeout: Optional[int] = Field(None, ge=1, description="Seconds before a collective times out.")
    ddp_find_unused_parameters: Optional[bool] = Field(None, description="DDP: search for unused parameters.")

    @model_validator(mode="before")
    @classmethod
    def _fsdp_from_its_config(cls, data: Any) -> Any:
        """An `fsdp_config:` with settings and no `fsdp:` turns FSDP on, as Axolotl reads it (its `fsdp:` list is
        deprecated there): the config's sharding strategy (full_shard unless it says otherwise), auto-wrapped.
        `fsdp: []` written (as ft's resolved config writes it) keeps FSDP off."""
        if isinstance(data, dict) and "fsdp" not in data and isinstance(data.get("fsdp_config"), dict) and data["fsdp_config"]:
            settings = data["fsdp_config"]
            strategy = settings.get("fsdp_sharding_strategy") or settings.get("sharding_strategy") or "full_shard"
            data = {**data, "fsdp": [str(strategy).lower(), "auto_wrap"]}
        return data

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed(cls, v: Any, info: ValidationInfo) -> Any:
        context = context_of(info)
        if context is not None and v is not None:
            context.check_deepspeed(v)  # launch/ reads and checks the file
        return v

    @field_validator("fsdp", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v.split()
        if v is None or v is False:
            return ()
        return v

    @field_validator("fsdp")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for option in v:
            if option not in FSDP_OPTIONS:
                raise ValueError(f"unknown fsdp option `{option}`; valid: {', '.join(FSDP_OPTIONS)}")
        return v

    @property
    def backend(self) -> Optional[str]:
        return "deepspeed" if self.deepspeed else "fsdp" if self.fsdp else None
