"""Every mistake a user can make in a config ends with exit code 2 and one message naming where and what."""

from __future__ import annotations

from pathlib import Path

from conftest import run_ft

BASE = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\n"

# The catalogue of bad configs and data is tests/catalog.py (run by tests/test_bad_inputs.py).


def test_deepspeed_json_is_checked(tmp_path: Path):
    (tmp_path / "ds.json").write_text('{\n  "zero_optimization": {"stage": 2},\n  "bf16": {"enabled": "auto"},\n}\n')
    (tmp_path / "cfg.yml").write_text(BASE + "deepspeed: ds.json\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "ds.json:4: not valid JSON" in result.stderr, result.stderr
    seed = Path(__file__).resolve().parents[2] / "shared/seed-configs/ZeRO1.json"
    if seed.exists():  # the first user's file spells `ZeRO_optimization`, which DeepSpeed never reads
        (tmp_path / "ds.json").write_text(seed.read_text())
        result = run_ft("validate", "cfg.yml", cwd=tmp_path)
        assert result.returncode == 2 and "did you mean `zero_optimization`" in result.stderr, result.stderr
    for shipped in sorted((Path(__file__).resolve().parents[1] / "deepspeed_configs").glob("*.json")):
        (tmp_path / "cfg.yml").write_text(BASE + f"deepspeed: {shipped}\n")
        result = run_ft("validate", "cfg.yml", cwd=tmp_path)
        assert result.returncode == 0, (shipped.name, result.stderr)


def test_missing_file(tmp_path: Path):
    result = run_ft("validate", "nope.yml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yml: no such file" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path):
    (tmp_path / "cfg.yml").write_text(BASE + "lora_alpah: 1\n")
    result = run_ft("--debug", "validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_bad_override_names_the_command_line(tmp_path: Path):
    (tmp_path / "cfg.yml").write_text(BASE)
    result = run_ft("validate", "cfg.yml", "--lerning-rate", "1e-4", cwd=tmp_path)
    assert result.returncode == 2
    assert "command line: unknown key `lerning_rate` (did you mean `learning_rate`?)" in result.stderr
    result = run_ft("validate", "cfg.yml", "--micro-batch-size", "lots", cwd=tmp_path)
    assert result.returncode == 2 and "command line: `micro_batch_size`" in result.stderr


def test_ignored_axolotl_key_warns(tmp_path: Path):
    (tmp_path / "cfg.yml").write_text(BASE + "strict: false\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "`strict` is ignored" in result.stderr


def test_every_format_specific_key_is_read_by_some_format():
    from ft.commands.config import validation_context
    from ft.config.data import FORMAT_KEYS

    reads = validation_context().format_reads
    assert set(FORMAT_KEYS) == {key for keys in reads.values() for key in keys}
