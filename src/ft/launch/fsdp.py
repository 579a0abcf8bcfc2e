"""FSDP settings as the installed transformers reads them.

transformers takes `fsdp_config` as a loose dict and ignores keys it does not know, silently: the seed's
`fsdp_offload_params: true` reaches it as `offload_params`, which it never reads (it reads `cpu_offload`), so
nothing was offloaded. ft's `fsdp_config` keys are validated (config/distributed.py) and translated here,
one by one, into the keys transformers' `TrainingArguments._process_fsdp_args` reads (5.17 to 5.24); the
sharding strategy of `fsdp:` becomes FSDP2's `reshard_after_forward` or FSDP1's strategy name. FSDP2 is the
default (transformers deprecates FSDP1); `fsdp_version: 1` still selects FSDP1.
"""

from __future__ import annotations

from typing import Any

from ft.config.distributed import DistributedConfig, FsdpConfig

# ft's key → transformers' key, for the keys read under both versions
SHARED = {
    "fsdp_version": "version",
    "fsdp_offload_params": "cpu_offload",
    "fsdp_cpu_ram_efficient_loading": "cpu_ram_efficient_loading",
    "fsdp_state_dict_type": "state_dict_type",
    "fsdp_auto_wrap_policy": "auto_wrap_policy",
    "fsdp_transformer_layer_cls_to_wrap": "transformer_layer_cls_to_wrap",
    "fsdp_min_num_params": "min_num_params",
    "fsdp_activation_checkpointing": "activation_checkpointing",
    "fsdp_reshard_after_forward": "reshard_after_forward",
}
# read only under FSDP1
FSDP1_ONLY = {
    "fsdp_sync_module_states": "sync_module_states",
    "fsdp_use_orig_params": "use_orig_params",
    "fsdp_backward_prefetch": "backward_prefetch",
    "fsdp_forward_prefetch": "forward_prefetch",
    "fsdp_limit_all_gathers": "limit_all_gathers",
}


def library_fsdp_config(d: DistributedConfig) -> dict[str, Any]:
    """`fsdp_config` for TrainingArguments: every setting the user wrote, under the key transformers reads."""
    f: FsdpConfig = d.fsdp_config
    written = f.model_fields_set | {"fsdp_version"}
    out: dict[str, Any] = {}
    for key, value in f.model_dump().items():
        if value is None or (key not in written and key not in ("fsdp_state_dict_type", "fsdp_auto_wrap_policy")):
            continue
        if key in SHARED:
            out[SHARED[key]] = value
        elif key in FSDP1_ONLY and f.fsdp_version == 1:
            out[FSDP1_ONLY[key]] = value
    if "offload" in d.fsdp:
        out["cpu_offload"] = True
    strategy = f.fsdp_sharding_strategy or next((o for o in d.fsdp if o not in ("offload", "auto_wrap")), None)
    if strategy and "reshard_after_forward" not in out:
        out["reshard_after_forward"] = strategy.lower() if f.fsdp_version == 1 else strategy.lower() == "full_shard"
    if isinstance(out.get("transformer_layer_cls_to_wrap"), str):
        out["transformer_layer_cls_to_wrap"] = [c.strip() for c in out["transformer_layer_cls_to_wrap"].split(",")]
    return out


def fsdp_flag(d: DistributedConfig) -> Any:
    """`fsdp=` for TrainingArguments: True where the installed transformers takes it (its list and string
    forms are deprecated there), else the options as a list, which older versions parse (fsdp_config's
    explicit keys win over what they derive from it)."""
    from transformers import TrainingArguments

    field = TrainingArguments.__dataclass_fields__["fsdp"]
    takes_true = "bool" in str(field.type) or "fsdp=True" in str(field.metadata.get("help", ""))
    return True if takes_true else list(d.fsdp)
