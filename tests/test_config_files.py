"""Every config we ship, and every seed config our first user wrote, validates as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SHARED, run_ft
from ft.commands.config import load as load_config
from ft.config import resolved_yaml

SHIPPED = sorted((ROOT / "configs").glob("*.yml")) + sorted((ROOT / "examples").rglob("*.yml"))
SEEDS = sorted((SHARED / "seed-configs").glob("*.yml")) if (SHARED / "seed-configs").is_dir() else []


def test_there_are_configs_to_check():
    assert SHIPPED, "configs/ and examples/ hold no YAML"


@pytest.mark.parametrize("path", SHIPPED + SEEDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates(path: Path):
    cfg = load_config(path)
    assert cfg.model.base_model
    assert cfg.data.datasets


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_seed_config_through_cli(path: Path):
    result = run_ft("validate", path)
    assert result.returncode == 0, result.stderr
    assert "effective batch size" in result.stdout


@pytest.mark.parametrize("path", SHIPPED + SEEDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_resolved_config_reads_back_unchanged(path: Path, tmp_path: Path):
    cfg = load_config(path)
    out = tmp_path / "resolved.yml"
    out.write_text(resolved_yaml(cfg))
    assert load_config(out) == cfg


def test_seed_values_survive():
    """Spot checks on what the seed configs say: aliases, folded strings, real newlines."""
    if not SEEDS:
        pytest.skip("../shared/seed-configs is not here")
    phi = load_config(SHARED / "seed-configs/specialised_phi.yml")
    assert phi.data.sequence_len == 8172  # written as sequence_length
    assert phi.quantization.load_in_8bit and phi.adapter.adapter == "lora"
    assert phi.data.datasets[0].type.format == "<|user|> {input} {instruction} </s> <|assistant|>"
    adv2 = load_config(SHARED / "seed-configs/advanced_train2.yml")
    assert adv2.data.datasets[0].type.format == "<|user|>\n {instruction} </s>\n<|assistant|>"
    fsdp = load_config(SHARED / "seed-configs/llama70b_fsdp_qlora.yml")
    assert fsdp.distributed.fsdp == ("full_shard", "auto_wrap")
    assert fsdp.distributed.fsdp_config.fsdp_offload_params is True
    assert fsdp.model.special_tokens.pad_token == "<|end_of_text|>"
    raw = yaml.safe_load((SHARED / "seed-configs/specialised_gemma.yml").read_text())
    assert load_config(SHARED / "seed-configs/specialised_gemma.yml").training.learning_rate == raw["learning_rate"]
