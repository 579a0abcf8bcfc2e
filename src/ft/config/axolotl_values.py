"""Axolotl's values for keys ft shares with it, and Axolotl's keys of a `datasets:` entry.

config/axolotl.py answers the top-level keys ft lacks. Here: a key both know, written with a value only Axolotl
knows (`chat_template: qwen3`, `optimizer: adamw_torch_8bit`, `gradient_checkpointing: offload`, one of its
bundled DeepSpeed files), becomes ft's equivalent, said once; and each key of a dataset entry that ft lacks is
mapped onto ft's own, or refused naming the Axolotl feature. A value neither knows is left for ft's own check.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ft.config.axolotl import is_empty

# Axolotl's named chat templates that are copies of a model vendor's own template: the model's tokenizer carries
# the same template, so ft uses the tokenizer's (`tokenizer_default`) and ships no copy of Axolotl's.
VENDOR_TEMPLATES = frozenset("""
mistral_v1 mistral_v2v3 mistral_v3_tekken mistral_v7_tekken cohere llama4 phi_35 deepseek_v2 deepseek_v3 jamba
qwen_25 qwen3 qwen3_5 falcon_h1 nemotron_h exaone exaone4 gemma3 gemma3n gemma4 gemma4_unified command_a
command_a_tool_use command_a_rag aya tokenizer_default_fallback_chatml
""".split())
SAME_TEMPLATES = {"phi_3": "phi3"}  # Axolotl's name for a template ft ships under another name
MULTIMODAL_TEMPLATES = frozenset({"llama3_2_vision", "llava", "pixtral", "qwen2_vl"})
OWN_TEMPLATES = frozenset({"alpaca", "metharme"})  # Axolotl's own conversation formats, no vendor's

# Axolotl's optimizers that ft maps onto its own: (ft's name, what differs in words)
OPTIMIZERS = {
    "adamw_torch_8bit": ("adamw_bnb_8bit", "torchao's 8-bit AdamW → bitsandbytes' 8-bit AdamW (the same algorithm "
                         "and state size)"),
    "ao_adamw_8bit": ("adamw_bnb_8bit", "torchao's 8-bit AdamW → bitsandbytes' 8-bit AdamW (the same algorithm and "
                      "state size)"),
    "adamw_torch_4bit": ("adamw_bnb_8bit", "torchao's 4-bit AdamW → bitsandbytes' 8-bit AdamW (2 bytes of optimizer "
                         "state per trained parameter instead of 1; `ft plan` counts it)"),
    "ao_adamw_4bit": ("adamw_bnb_8bit", "torchao's 4-bit AdamW → bitsandbytes' 8-bit AdamW (2 bytes of optimizer "
                      "state per trained parameter instead of 1; `ft plan` counts it)"),
}
REFUSED_OPTIMIZERS = frozenset("""
optimi_adamw ao_adamw_fp8 adopt_adamw came_pytorch dion sinkgd flash_adamw flash_adam flash_sgd flash_sgdw
flash_lion q_galore_adamw8bit schedule_free_adamw lomo adalomo galore_adamw galore_adamw_8bit apollo_adamw
""".split())

# Axolotl's `rl:` methods that ft does not train yet
RL_REFUSED = {"gkd": "GKD",
              "dpo_norm": "normalised DPO"}

# Axolotl's bundled DeepSpeed files (its deepspeed_configs/) → ft's files of the same ZeRO stage and offload.
DEEPSPEED_FILES = {
    "zero1_torch_compile.json": "zero1.json",
    "zero2_torch_compile.json": "zero2.json",
    "zero3_bf16.json": "zero3.json",
    "zero3_bf16_cpuoffload_all.json": "zero3_offload.json",
    "zero3_bf16_cpuoffload_params.json": "zero3_offload_params.json",
}


def top_level(key: str, value: Any) -> tuple[dict[str, Any], str]:
    """ft's keys for `key: value` when the value is Axolotl's (what was done in words), or ({key: value}, "")
    when ft reads it as written. A value ft cannot honour raises ValueError with the sentence to show."""
    if key == "chat_template":
        return _template(key, value)
    if key == "optimizer" and isinstance(value, str):
        if value in OPTIMIZERS:
            name, said = OPTIMIZERS[value]
            return {key: name}, f"`optimizer: {value}`: {said}"
        if value in REFUSED_OPTIMIZERS:
            raise ValueError(f"Axolotl's optimizer `{value}` is not supported by ft yet; choose one of ft's (`ft "
                             "config-schema` lists them), e.g. adamw_torch or adamw_bnb_8bit")
    if key == "deepspeed" and isinstance(value, str) and PurePosixPath(value).name in DEEPSPEED_FILES:
        ours = str(PurePosixPath(value).with_name(DEEPSPEED_FILES[PurePosixPath(value).name]))
        return {key: ours}, f"`deepspeed: {value}` (Axolotl's bundled file) → `{ours}` (the same ZeRO stage and offload)"
    if key == "rl" and isinstance(value, str) and value in RL_REFUSED:
        raise ValueError(f"Axolotl's `rl: {value}` ({RL_REFUSED[value]}) is not supported by ft yet; ft trains dpo, ipo, "
                         "orpo, simpo, kto, ebft, grpo and gdpo")
    if key == "experts_implementation" and isinstance(value, str) and value in ("scattermoe", "sonicmoe"):
        return {}, (f"`experts_implementation: {value}` (Axolotl's experts kernel) ignored: ft runs transformers' "
                    "own experts implementation, with the same results")
    if key == "attn_implementation" and value == "xformers":
        return {key: "sdpa"}, ("`attn_implementation: xformers` (Axolotl's xformers attention) → `attn_implementation: "
                               "sdpa`: PyTorch's memory-efficient attention, the same math")
    if key == "attn_implementation" and isinstance(value, str) and "/" in value:
        return {key: "flash_attention_2"}, (f"`attn_implementation: {value}` (a Hugging Face hub kernel) → "
                                            "`attn_implementation: flash_attention_2`, the same attention from flash-attn "
                                            "(sdpa where it is not installed)")
    if key == "eval_causal_lm_metrics" and isinstance(value, list) and "perplexity" in value:
        return ({key: [m for m in value if m != "perplexity"]},
                "`perplexity` taken out of `eval_causal_lm_metrics`: ft computes the references' loss and perplexity at "
                "every evaluation anyway")
    if key == "gradient_checkpointing" and value == "offload":
        return ({"gradient_checkpointing": True, "activation_offloading": True},
                "`gradient_checkpointing: offload` → `gradient_checkpointing: true`, `activation_offloading: true`")
    if key == "activation_offloading" and value == "legacy":
        return {key: True}, "`activation_offloading: legacy` → `activation_offloading: true`"
    if key in ("evals_per_epoch", "saves_per_epoch") and value == 0 and type(value) is int:
        return {}, f"`{key}: 0` read as not set, as Axolotl reads it"
    if key == "warmup_steps" and isinstance(value, float) and 0 < value < 1:
        return {"warmup_ratio": value}, f"`warmup_steps: {value}` (a share of the steps, as transformers reads a " \
            f"value below 1) → `warmup_ratio: {value}`"
    if key == "tokens" and isinstance(value, dict):
        return {"special_tokens": value}, "`tokens:` as a mapping (Axolotl's older spelling) → `special_tokens:`"
    return {key: value}, ""


def _template(key: str, value: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(value, str):
        return {key: value}, ""
    if value in VENDOR_TEMPLATES:
        return {key: "tokenizer_default"}, (f"`{key}: {value}` (Axolotl's copy of the model's own template) → "
                                            f"`{key}: tokenizer_default` (the template the model's tokenizer carries)")
    if value in SAME_TEMPLATES:
        return {key: SAME_TEMPLATES[value]}, f"`{key}: {value}` → `{key}: {SAME_TEMPLATES[value]}`"
    if value == "jinja":
        return {}, f"`{key}: jinja` read as not set: `chat_template_jinja` gives the template"
    if value in MULTIMODAL_TEMPLATES:
        raise ValueError(f"Axolotl's `{key}: {value}` (multimodal models) is not supported by ft yet; remove it")
    if value in OWN_TEMPLATES:
        raise ValueError(f"Axolotl's `{key}: {value}` (Axolotl's own {value} conversation format) is not supported by "
                         "ft yet; use the model's own template (tokenizer_default) or chatml")
    return {key: value}, ""


# Axolotl's keys of a `datasets:` entry that ft's DatasetConfig lacks, refused by feature unless empty or set to
# what ft does anyway (the values in the tuple).
REFUSED_DATASET_KEYS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "split_thinking": ("reasoning text split from the answer", (False,)),
    "message_field_training": ("per-turn training flags", ()),
    "message_field_training_detail": ("per-turn training spans", ()),
    "field_tools": ("tool definitions in the chat template", ()),
    "field_human": ("the pygmalion format", ()),
    "field_model": ("the pygmalion format", ()),
    "conversation": ("FastChat conversation styles", ()),
    "input_format": ("Axolotl's input formats", ()),
    "input_transform": ("Axolotl's input transforms", ()),
    "shards": ("training on a shard of a dataset", ()),
    "shards_idx": ("training on a shard of a dataset", ()),
    "preprocess_shards": ("preparing a dataset in shards", ()),
    "trust_remote_code": ("dataset loading scripts", (False,)),
    "skip": ("skipping rows of a streamed dataset", ()),
}


def dataset_entry(entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A `datasets:` entry with Axolotl's keys and values turned into ft's, and what was done in words. A key ft
    cannot honour raises ValueError naming it (a KeyError-free sentence)."""
    out: dict[str, Any] = {}
    said: list[str] = []
    for key, value in entry.items():
        if key in REFUSED_DATASET_KEYS:
            feature, same = REFUSED_DATASET_KEYS[key]
            if is_empty(value) or any(value == s and type(value) is type(s) for s in same):
                continue
            raise ValueError(f"Axolotl's dataset key `{key}` ({feature}) is not supported by ft yet; remove it")
        if key == "message_property_mappings" and isinstance(value, dict):
            for field, column in value.items():
                ft_key = {"role": "message_field_role", "content": "message_field_content"}.get(field)
                if ft_key is None:
                    raise ValueError(f"Axolotl's `message_property_mappings` entry `{field}` (extra message fields in "
                                     "the chat template) is not supported by ft yet; map only role and content")
                if field != column:
                    out[ft_key] = column
            said.append("`message_property_mappings` → " + (", ".join(
                f"`{k}: {v}`" for k, v in out.items() if k.startswith("message_field_")) or "the default fields"))
            continue
        if key == "train_on_eot":
            if "train_on_eos" in entry and entry["train_on_eos"] != value:
                raise ValueError("Axolotl's `train_on_eot` and `train_on_eos` differ; ft trains one end-of-turn text per "
                                 "turn (`train_on_eos`): keep one")
            out.setdefault("train_on_eos", value)
            said.append(f"`train_on_eot: {value}` → `train_on_eos: {value}`")
            continue
        if key == "type" and value == "axolotl.integrations.kd.chat_template":
            out[key] = "chat_template"
            said.append("`type: axolotl.integrations.kd.chat_template` → `type: chat_template` (the rows' "
                        "`logprobs_field` gives the teacher)")
            continue
        if key == "chat_template":
            mapped, words = _template(key, value)
            out.update(mapped)
            if words:
                said.append(words)
            continue
        out[key] = value
    return out, said


# Axolotl's dataset types (its prompt strategies) that ft has no format for, by their first word: the feature
AXOLOTL_TYPES = {
    "kto": "KTO rows",
    "chatml": "its DPO prompt strategies", "llama3": "its DPO prompt strategies", "zephyr": "its DPO prompt strategies",
    "chat_template": "its DPO prompt strategies", "passthrough": "its DPO prompt strategies",
    "pretrain": "pretraining datasets", "ebft_strided_chat": "EBFT's chat transforms",
    "ebft_chat_multiturn": "EBFT's multi-turn rollouts", "ebft_reasoning": "EBFT's reasoning transforms",
}
LEGACY_TYPES = frozenset("""oasst gpteacher reflection explainchoice concisechoice summarizetldr context_qa
creative_acr alpaca_w_system alpaca_instruct orcamini pygmalion metharme llama2_chat""".split())


def dataset_type_feature(name: str) -> str:
    """The Axolotl feature a dataset type ft does not know belongs to ("" when it is not one of Axolotl's)."""
    first = name.replace(":", ".").split(".")[0]
    if first in LEGACY_TYPES:
        return f"its `{first}` prompt format"
    return AXOLOTL_TYPES.get(first, "")

