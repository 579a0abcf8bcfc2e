"""Each seed config trains a few steps as written, with only the hub names swapped for local ones.

Swapped: base_model (a tiny model of the same architecture), each dataset path (a local file with the
columns the config names) and output_dir; max_steps is added to keep the run short. Every other key,
quantization, optimizer, gradient checkpointing and prompt format included, is the user's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA, SHARED, run_ft

SEEDS = {
    "specialised_phi.yml": ("phi3", "squad.jsonl"),
    "specialised_phi_outputs_only.yml": ("phi3", "squad.jsonl"),
    "specialised_gemma.yml": ("gemma2", "alpaca.jsonl"),
    "advanced_train.yml": ("llama", "storyteller.jsonl"),
    "advanced_train2.yml": ("llama", "storyteller.jsonl"),
    "llama3_squad_deepspeed.yml": ("llama", "squad.jsonl"),
    "llama70b_fsdp_qlora.yml": ("llama", "alpaca.jsonl"),
}
pytestmark = pytest.mark.skipif(not (SHARED / "seed-configs").is_dir(), reason="../shared/seed-configs is not here")


def test_every_seed_config_is_covered():
    assert sorted(SEEDS) == sorted(p.name for p in (SHARED / "seed-configs").glob("*.yml"))


@pytest.mark.parametrize("name", list(SEEDS))
def test_seed_config_trains(name: str, tmp_path: Path, tiny_model_dir):
    arch, data = SEEDS[name]
    result = run_ft(
        "train", SHARED / "seed-configs" / name,
        "--base-model", tiny_model_dir(arch),
        "--set", f"datasets.0.path={DATA / data}",
        "--output-dir", tmp_path / "out",
        "--max-steps", "2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["steps"] == 2
    weights = "adapter_model.safetensors"
    assert (tmp_path / "out" / weights).is_file()
    if "flash_attention: true" in (SHARED / "seed-configs" / name).read_text():
        assert "falling back to sdpa" in result.stderr
