"""FSDP settings reach accelerate's plugin: every `fsdp_config` key under the name the installed transformers
reads (it drops unknown ones silently), FSDP2 by default, FSDP1 still selectable, a key the chosen version
does not read refused, and 4-bit weights never stored as uint8 under FSDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SHARED, run_ft


def _plugin(tmp_path: Path, fsdp: list, fsdp_config: dict):
    """(TrainingArguments, accelerate's FSDP plugin) as ft builds them for two processes."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from ft.commands.config import load
    from ft.launch.backend import trainer_arguments

    (tmp_path / "cfg.yml").write_text(yaml.safe_dump({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                                                      "fsdp": fsdp, "fsdp_config": fsdp_config}))
    cfg = load(tmp_path / "cfg.yml")
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **trainer_arguments(cfg.distributed, 2))
    return args, FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)


def test_the_seeds_fsdp_block_reaches_the_plugin(tmp_path: Path):
    """llama70b_fsdp_qlora.yml's block: offloading, CPU-RAM-efficient loading, the state dict type, the layer."""
    seed = yaml.safe_load((SHARED / "seed-configs/llama70b_fsdp_qlora.yml").read_text()) if SHARED.is_dir() else None
    block = seed["fsdp_config"] if seed else {"fsdp_offload_params": True, "fsdp_cpu_ram_efficient_loading": True,
                                              "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}
    args, plugin = _plugin(tmp_path, ["full_shard", "auto_wrap"], block)
    assert plugin.fsdp_version == 2
    assert plugin.cpu_offload  # FSDP2: an offload policy; it was silently off before
    assert plugin.cpu_ram_efficient_loading and str(plugin.state_dict_type).endswith("FULL_STATE_DICT")
    assert plugin.reshard_after_forward is True
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]


def test_fsdp1_is_still_selectable_with_its_own_keys(tmp_path: Path):
    _, plugin = _plugin(tmp_path, ["shard_grad_op"], {"fsdp_version": 1, "state_dict_type": "SHARDED_STATE_DICT",
                                                      "use_orig_params": True, "offload_params": True,
                                                      "sync_module_states": False})  # (True wants a GPU in accelerate)
    assert plugin.fsdp_version == 1 and plugin.use_orig_params and plugin.cpu_offload.offload_params
    assert str(plugin.reshard_after_forward).endswith("SHARD_GRAD_OP") and str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")


@pytest.mark.parametrize("extra, words", [
    ("fsdp_config:\n  version: 2\n  sync_module_states: true\n", ("`fsdp_sync_module_states` is read only by FSDP1",
                                                                  "fsdp_cpu_ram_efficient_loading")),
    ("fsdp_version: 2\nfsdp_config:\n  backward_prefetch: BACKWARD_PRE\n", ("`fsdp_backward_prefetch` is read only by FSDP1",)),
    ("fsdp_config:\n  offload_param: true\n", ("unknown key", "did you mean `fsdp_offload_params`")),
    ("adapter: qlora\nload_in_4bit: true\nbnb_4bit_quant_storage: uint8\n", ("stored as uint8", "remove `bnb_4bit_quant_storage`")),
], ids=["sync_module_states", "backward_prefetch", "a misspelt key", "uint8 storage"])
def test_settings_fsdp_would_drop_are_refused(extra, words, tmp_path: Path):
    (tmp_path / "cfg.yml").write_text("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\nfsdp: [full_shard]\n" + extra)
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
