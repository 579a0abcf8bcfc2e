"""`ft merge-lora`: fold the adapter into a 16-bit (or fp32 on CPU) copy of the base model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ft.config.model import ModelConfig
from ft.errors import ConfigError
from ft.model.precision import resolve_dtype
from ft.files import fsync_path
from ft.progress import Progress
from ft.tokenizer.load import load_tokenizer

log = logging.getLogger("ft")


def head_outputs(adapter: Path) -> int:
    """The classes of the head saved with a classification adapter (its `score` weight's rows)."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("score.weight"))
        return int(f.get_slice(name).get_shape()[0])


def merge_lora(m: ModelConfig, adapter: Path, out: Path) -> Path:
    """Write to `out` the base model of `m` with the adapter in `adapter` folded in, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ft.model.load import dequantized
    from ft.model.loftq import load_adapter

    if (adapter / "bottleneck_config.json").is_file():
        raise ConfigError(f"the bottleneck adapters in {adapter} cannot be merged: a nonlinearity sits between their two "
                          "projections, so no single weight holds them; `ft inference` and `ft eval` load them beside the base")
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"no adapter in {adapter} (adapter_config.json is missing); train first or pass --lora-model-dir")
    check_mergeable(adapter)
    if (adapter / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)  # the one saved with the adapter (added tokens)
    else:
        tokenizer = load_tokenizer(m)
    log.info("loading the base model %s", m.base_model)
    task = json.loads((adapter / "adapter_config.json").read_text()).get("task_type")
    # a reward model (SEQ_CLS) or a process reward model (TOKEN_CLS): its head saved with the adapter
    auto = {"SEQ_CLS": AutoModelForSequenceClassification, "TOKEN_CLS": AutoModelForTokenClassification}.get(
        task, AutoModelForCausalLM)
    extra = {"num_labels": head_outputs(adapter) if task == "TOKEN_CLS" else 1, "pad_token_id": tokenizer.pad_token_id} if (
        task in ("SEQ_CLS", "TOKEN_CLS")) else {}
    base = auto.from_pretrained(
        # the training precision (fp32 on CPU), never quantized: the adapter merges into full weights
        m.base_model, dtype=resolve_dtype(m), trust_remote_code=m.trust_remote_code, revision=m.revision_of_model,
        **dequantized(m), **extra,
    )
    if len(tokenizer) != base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    merged = fold(load_adapter(base, adapter))  # a LoftQ adapter's base quantized as in training first
    log.info("writing the merged model")
    # written beside `out` and renamed into place: a merge cut off midway leaves no `out` to be trusted
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, max_shard_size="5GB")
    tokenizer.save_pretrained(staging)
    for path in staging.iterdir():
        fsync_path(path)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    fsync_path(out.parent)
    log.info("merged %s into %s → %s", adapter, m.base_model, out)
    return out


# PEFT's types that add inputs rather than change weights: there is nothing to fold them into
SEPARATE = {"PROMPT_TUNING": "prompt tuning's virtual tokens are inputs before each row, not a change of any weight",
            "PREFIX_TUNING": "prefix tuning's keys and values are added to every layer's attention, not to any weight",
            "P_TUNING": "P-tuning's virtual tokens are inputs before each row, not a change of any weight"}


def check_mergeable(adapter: Path) -> None:
    import json

    kind = json.loads((adapter / "adapter_config.json").read_text()).get("peft_type", "")
    if kind in SEPARATE:
        raise ConfigError(f"the adapter in {adapter} cannot be merged: {SEPARATE[kind]}; `ft inference` and `ft eval` "
                          "load it beside the base as it is")


def fold(model: Any) -> Any:
    """The adapter's layers merged into their base weights one by one (a progress line where it takes long: a
    70B model has 560 of them), then the wrappers taken away: the plain model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    progress = Progress(len(layers), "ft merge-lora: folding the adapter's layers")
    for layer in layers:
        layer.merge()
        progress.advance(1)
    progress.close()
    return model.unload()
