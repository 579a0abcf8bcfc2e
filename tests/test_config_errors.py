"""Every mistake a user can make in a config ends with exit code 2 and one message naming where and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_ft

BASE = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\n"

CASES = {
    # name: (YAML text, substrings the message must hold)
    "unknown key": (BASE + "lora_alpah: 16\n", ["cfg.yml:5", "unknown key `lora_alpah`", "did you mean `lora_alpha`"]),
    "unknown nested key": (
        "base_model: m\ndatasets:\n  - path: d\n    type:\n      field_instructon: q\n",
        ["cfg.yml:5", "unknown key `field_instructon`", "did you mean `field_instruction`"],
    ),
    "wrong type": (BASE + "micro_batch_size: two\n", ["cfg.yml:5", "`micro_batch_size`", "valid integer", "'two'"]),
    "bad literal": (BASE + "adapter: lorra\n", ["cfg.yml:5", "`adapter`", "'lora' or 'qlora'"]),
    "missing required": ("datasets:\n  - path: d\n    type: alpaca\n", ["`base_model` is required"]),
    "malformed yaml": (BASE + "lora_r: [8\n", ["cfg.yml:6", "malformed YAML"]),
    "not a mapping": ("- a\n- b\n", ["top level must be a mapping"]),
    "duplicate key": (BASE + "lora_r: 8\nlora_r: 16\n", ["cfg.yml:6", "`lora_r` appears twice"]),
    "alias and name": (BASE + "sequence_len: 512\nsequence_length: 1024\n", ["mean the same thing"]),
    "unknown dataset type": (
        "base_model: m\ndatasets:\n  - path: d\n    type: alpacca\n",
        ["cfg.yml:4", "unknown dataset type `alpacca`", "did you mean `alpaca`", "chat_template, completion"],
    ),
    "unknown optimizer": (BASE + "optimizer: adam_w\n", ["cfg.yml:5", "unknown optimizer `adam_w`", "adamw_torch,"]),
    "unknown scheduler": (BASE + "lr_scheduler: cosin\n", ["unknown lr_scheduler `cosin`", "did you mean `cosine`"]),
    "unknown chat template": (
        BASE + "chat_template: chatmll\n",
        ["`chat_template`", "did you mean `chatml`"],
    ),
    "unknown placeholder": (
        "base_model: m\ndatasets:\n  - path: d\n    type:\n      format: '{question}'\n",
        ["cfg.yml:4", "unknown placeholder {question}", "{instruction}"],
    ),
    "4-bit with lora": (BASE + "adapter: lora\nload_in_4bit: true\n", ["cfg.yml:5", "use `adapter: qlora`"]),
    "qlora without 4-bit": (BASE + "adapter: qlora\n", ["cfg.yml:5", "add `load_in_4bit: true`"]),
    "8-bit and 4-bit": (
        BASE + "adapter: qlora\nload_in_8bit: true\nload_in_4bit: true\n",
        ["cfg.yml:6", "both true"],
    ),
    "quantized without adapter": (BASE + "load_in_8bit: true\n", ["cfg.yml:5", "add `adapter: lora`"]),
    "deepspeed and fsdp": (
        BASE + "deepspeed: {zero_optimization: {stage: 2}}\nfsdp: [full_shard]\n",
        ["cfg.yml:6", "`deepspeed` and `fsdp`"],
    ),
    "deepspeed file missing": (
        BASE + "deepspeed: zero2.json\n",
        ["cfg.yml:5", "DeepSpeed file `zero2.json` not found", "deepspeed_configs/"],
    ),
    "deepspeed key misspelt": (
        BASE + "deepspeed:\n  ZeRO_optimization: {stage: 1}\n",
        ["cfg.yml:5", "`ZeRO_optimization`", "DeepSpeed would ignore it", "did you mean `zero_optimization`"],
    ),
    "deepspeed stage": (BASE + "deepspeed: {zero_optimization: {stage: 4}}\n", ["cfg.yml:5", "stages 0, 1, 2 and 3"]),
    "bf16 and fp16": (BASE + "bf16: true\nfp16: true\n", ["cfg.yml:6", "`bf16` and `fp16`"]),
    "save_steps and saves_per_epoch": (
        BASE + "save_steps: 10\nsaves_per_epoch: 2\n",
        ["cfg.yml:6", "`save_steps` and `saves_per_epoch`"],
    ),
    "eval_steps and evals_per_epoch": (
        BASE + "val_set_size: 0.1\neval_steps: 10\nevals_per_epoch: 2\n",
        ["cfg.yml:7", "`eval_steps` and `evals_per_epoch`"],
    ),
    "unknown fsdp option": (BASE + "fsdp: full_shardd\n", ["unknown fsdp option `full_shardd`"]),
    "early stopping without eval": (BASE + "early_stopping_patience: 3\n", ["needs evaluation data"]),
    "a key the format never reads": (
        BASE + "    roles_to_train: [assistant, user]\n",
        ["cfg.yml:5", "`roles_to_train` is only read by `type: chat_template`", "`type: alpaca`"],
    ),
    "a key no format reads without a type": (
        "base_model: m\ndatasets:\n  - path: d\n    field: text\n",
        ["cfg.yml:4", "`field` is only read by `type: completion`", "no `type:`"],
    ),
    "a chat key on a user-defined format": (
        "base_model: m\ndatasets:\n  - path: d\n    type: {format: '{instruction}'}\n    field_messages: turns\n",
        ["cfg.yml:5", "`field_messages` is only read by `type: chat_template`", "a user-defined `type:`"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_exits_2_with_message(name: str, tmp_path: Path):
    text, expected = CASES[name]
    (tmp_path / "cfg.yml").write_text(text)
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("ft: error: ")
    for piece in expected:
        assert piece in result.stderr, f"{piece!r} not in {result.stderr!r}"


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
