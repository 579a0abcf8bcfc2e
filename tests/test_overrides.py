"""Command-line overrides go through the same validation as the YAML and change the resolved values."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_ft
from ft.cli import parse_overrides
from ft.commands.config import load as load_config
from ft.errors import ConfigError

BASE = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\nlearning_rate: 0.0002\n"


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yml"
    path.write_text(BASE)
    return path


def test_flag_style_overrides(cfg_file: Path):
    pairs = parse_overrides(["--learning-rate", "1e-4", "--micro-batch-size", "2", "--gradient-checkpointing"], None)
    cfg = load_config(cfg_file, pairs)
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.training.micro_batch_size == 2
    assert cfg.training.gradient_checkpointing is True


def test_set_reaches_nested_keys(cfg_file: Path):
    pairs = parse_overrides([], ["datasets.0.path=other.jsonl", "fsdp_config.offload_params=true", "sequence_length=64"])
    cfg = load_config(cfg_file, pairs)
    assert cfg.data.datasets[0].path == "other.jsonl"
    assert cfg.distributed.fsdp_config.fsdp_offload_params is True
    assert cfg.data.sequence_len == 64


def test_override_is_validated(cfg_file: Path):
    with pytest.raises(ConfigError, match="adapter: qlora"):
        load_config(cfg_file, parse_overrides(["--adapter", "lora", "--load-in-4bit"], None))


def test_override_through_cli(cfg_file: Path):
    result = run_ft("validate", cfg_file, "--learning-rate", "3e-5", "--set", "lora_r=64")
    assert result.returncode == 0, result.stderr
    assert "learning_rate: 3.0e-05" in result.stdout
    assert "lora_r: 64" in result.stdout


def test_set_out_of_range_index(cfg_file: Path):
    with pytest.raises(ConfigError, match="index 3 is past the end"):
        load_config(cfg_file, parse_overrides([], ["datasets.3.path=x"]))


def test_axolotl_bnb_config_kwargs_block_is_read(tmp_path: Path):
    path = tmp_path / "cfg.yml"
    path.write_text(BASE + "adapter: qlora\nload_in_4bit: true\nbnb_config_kwargs:\n  bnb_4bit_quant_type: fp4\n"
                    "  bnb_4bit_use_double_quant: false\n")
    cfg = load_config(path)
    assert cfg.quantization.bnb_4bit_quant_type == "fp4" and cfg.quantization.bnb_4bit_use_double_quant is False
