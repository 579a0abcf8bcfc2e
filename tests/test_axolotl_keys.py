"""Axolotl's vocabulary (src/ft/config/axolotl.py): every key of Axolotl's schema that ft's own schema lacks,
set to a value and left empty, gets one of ft's answers (mapped, no-op, refused by name); none ends in "unknown
key", a did-you-mean or a traceback. Plugins are answered entry by entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft.commands.config import validation_context
from ft.config import axolotl, load_config
from ft.errors import ConfigError

BASE = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\n"


def _load(tmp_path: Path, extra: str):
    said: list[str] = []
    (tmp_path / "cfg.yml").write_text(BASE + extra)
    return load_config(tmp_path / "cfg.yml", context=validation_context(), warn=said.append), said


def _a_value(answer: axolotl.Answer):
    """A value that is not empty and not what ft does anyway."""
    return next(v for v in ("a value", 7, True, {"some": "thing"}) if not any(v == s and type(v) is type(s) for s in answer.same))


def test_every_key_left_empty_is_not_set(tmp_path: Path):
    keys = sorted(axolotl.VOCABULARY)
    cfg, said = _load(tmp_path, "".join(f"{k}:\n" for k in keys) + "fsdp_config:\nspecial_tokens:\nstrict:\n")
    assert cfg.training.learning_rate > 0
    line = next(s for s in said if "left empty, so not set" in s)
    assert all(f"`{k}`" in line for k in keys + ["fsdp_config", "special_tokens"])


@pytest.mark.parametrize("key", sorted(axolotl.VOCABULARY))
def test_every_key_set_is_answered_by_name(key: str, tmp_path: Path):
    answer = axolotl.answer(key)
    assert answer is not None and answer.kind in (axolotl.MAPPED, axolotl.NOOP, axolotl.REFUSED)
    if key == "plugins" or answer.kind == axolotl.MAPPED:
        return  # below, with values that mean something
    value = _a_value(answer)
    try:
        _, said = _load(tmp_path, f"{key}: {value!r}\n" if isinstance(value, str) else f"{key}: {value}\n".replace("'", ""))
    except ConfigError as exc:
        message = str(exc)
        assert answer.kind == axolotl.REFUSED, message
        assert f"Axolotl's `{key}` ({answer.feature}) is not supported by ft yet" in message, message
        assert "unknown key" not in message and "did you mean" not in message and "\n" not in message
        return
    assert answer.kind == axolotl.NOOP, key
    assert any(f"`{key}` ignored ({answer.feature})" in s for s in said), said


@pytest.mark.parametrize("extra, section, key, want", [
    ("cut_cross_entropy: true\n", "training", "chunked_cross_entropy", True),
    ("liger_fused_linear_cross_entropy: true\n", "training", "chunked_cross_entropy", True),
    ("liger_cross_entropy: true\n", "training", "chunked_cross_entropy", True),
    ("adapter: lora\nlora_qkv_kernel: true\nlora_mlp_kernel: true\n", "adapter", "lora_fused", True),
    ("liger_swiglu: true\n", "model", "liger_glu_activation", True),
    ("rl: dpo\ndpo_beta: 0.3\ndatasets:\n  - path: p.jsonl\n    type: preference\n", "preference", "rl_beta", 0.3),
    ("bfloat16: true\n", "model", "bf16", "full"),
    ("float16: true\n", "model", "fp16", True),
])
def test_mapped_keys_become_fts_own(extra, section, key, want, tmp_path: Path):
    said: list[str] = []
    (tmp_path / "cfg.yml").write_text((BASE if "datasets:" not in extra else "base_model: ./model\n") + extra)
    cfg = load_config(tmp_path / "cfg.yml", context=validation_context(), warn=said.append)
    assert getattr(getattr(cfg, section), key) == want
    assert any("from Axolotl:" in s and "→" in s for s in said), said


def test_fsdp_config_alone_turns_fsdp_on_as_axolotl_reads_it(tmp_path: Path):
    """Axolotl's current examples give only `fsdp_config:` (its `fsdp:` list is deprecated there): FSDP is on with
    the config's sharding strategy, auto-wrapped; an empty `fsdp_config:` leaves it off."""
    cfg, _ = _load(tmp_path, "fsdp_config:\n  fsdp_version: 2\n  offload_params: true\n")
    assert cfg.distributed.fsdp == ("full_shard", "auto_wrap") and cfg.distributed.backend == "fsdp"
    assert cfg.distributed.fsdp_config.fsdp_offload_params is True
    cfg, _ = _load(tmp_path, "fsdp_version: 2\nfsdp_config:\n  sharding_strategy: SHARD_GRAD_OP\n")
    assert cfg.distributed.fsdp == ("shard_grad_op", "auto_wrap")
    cfg, _ = _load(tmp_path, "fsdp_config:\n")
    assert cfg.distributed.fsdp == () and cfg.distributed.backend is None


def test_fsdp_version_merges_into_fsdp_config(tmp_path: Path):
    extra = "fsdp_version: 2\nfsdp: [full_shard, auto_wrap]\nfsdp_config:\n  transformer_layer_cls_to_wrap: LlamaDecoderLayer\n"
    cfg, said = _load(tmp_path, extra)
    assert cfg.distributed.fsdp_config.fsdp_version == 2
    assert cfg.distributed.fsdp_config.fsdp_transformer_layer_cls_to_wrap == "LlamaDecoderLayer"
    with pytest.raises(ConfigError, match="mean the same thing"):
        _load(tmp_path, extra.replace("LlamaDecoderLayer\n", "LlamaDecoderLayer\n  fsdp_version: 1\n"))


def test_what_ft_does_anyway_is_accepted_and_anything_else_refused(tmp_path: Path):
    _, said = _load(tmp_path, "xformers_attention: false\ngradient_checkpointing_kwargs:\n  use_reentrant: true\n")
    assert any("`xformers_attention: false` ignored" in s for s in said), said
    assert any("`gradient_checkpointing_kwargs` ignored (gradient checkpointing arguments)" in s for s in said), said
    with pytest.raises(ConfigError, match=r"Axolotl's `flash_attn_d512` \(flash attention for head size 512\) is not "
                       "supported by ft yet"):
        _load(tmp_path, "flash_attn_d512: true\n")


def test_a_key_said_twice_alike_is_taken_once(tmp_path: Path):
    cfg, _ = _load(tmp_path, "fp16: true\nfloat16: true\ncut_cross_entropy: true\nplugins:\n"
                             "  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n")
    assert cfg.model.fp16 is True and cfg.training.chunked_cross_entropy is True
    with pytest.raises(ConfigError, match="`bfloat16` and `bf16` mean the same thing; keep one"):
        _load(tmp_path, "bf16: auto\nbfloat16: true\n")


@pytest.mark.parametrize("entry, outcome", [
    ("axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin", "chunked_cross_entropy"),
    ("axolotl.integrations.liger.LigerPlugin", "ignored"),
    ("axolotl.integrations.liger.plugin.LigerPlugin", "ignored"),
    ("axolotl.integrations.kd.KDPlugin", "ignored"),
    ("axolotl.integrations.spectrum.SpectrumPlugin", "Axolotl's plugin `axolotl.integrations.spectrum.SpectrumPlugin` (Spectrum"),
    ("my_company.plugins.Secret", "the plugin `my_company.plugins.Secret` is not one ft knows"),
])
def test_plugins_are_answered_entry_by_entry(entry: str, outcome: str, tmp_path: Path):
    try:
        cfg, said = _load(tmp_path, f"plugins:\n  - {entry}\n")
    except ConfigError as exc:
        assert outcome in str(exc) and "did you mean" not in str(exc), str(exc)
        return
    if outcome == "chunked_cross_entropy":
        assert cfg.training.chunked_cross_entropy is True
    assert any(entry in s and ("→" in s or outcome in s) for s in said), said


def test_a_key_in_neither_vocabulary_keeps_its_did_you_mean(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown key `lerning_rate`.*did you mean `learning_rate`"):
        _load(tmp_path, "lerning_rate: 0.1\n")
    # a misspelt Axolotl key is pointed at Axolotl's spelling (then answered as that key is)
    with pytest.raises(ConfigError, match="unknown key `context_parapllel_size`.*did you mean `context_parallel_size`"):
        _load(tmp_path, "context_parapllel_size: 2\n")


def test_ft_validate_says_what_was_mapped_and_ignored(tmp_path: Path):
    from conftest import run_ft

    (tmp_path / "cfg.yml").write_text(BASE + "plugins:\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n"
                                      "liger_layer_norm: true\nspecial_tokens:\nlocal_rank:\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from Axolotl: plugin `axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin` (Cut Cross-Entropy) → `chunked_cross_entropy: true`" in result.stderr
    assert "from Axolotl: `liger_layer_norm` ignored (Liger kernels)" in result.stderr
    assert "left empty, so not set: `special_tokens`, `local_rank`" in result.stderr


def test_batch_size_sets_the_accumulation_as_axolotl_does(tmp_path: Path):
    cfg, _ = _load(tmp_path, "batch_size: 8\nmicro_batch_size: 2\n")
    assert cfg.training.gradient_accumulation_steps == 4 and cfg.effective_batch_size(1) == 8
    cfg, _ = _load(tmp_path, "batch_size: 8\nmicro_batch_size: 2\ngradient_accumulation_steps: 4\n")
    assert cfg.training.gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match=r"cfg.yml:5: `batch_size`: 8 is not micro_batch_size × gradient_accumulation_steps \(2 × 2\)"):
        _load(tmp_path, "batch_size: 8\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n")
    with pytest.raises(ConfigError, match="cfg.yml:5: `batch_size`: 6 is not a multiple of `micro_batch_size: 4`"):
        _load(tmp_path, "batch_size: 6\nmicro_batch_size: 4\n")
