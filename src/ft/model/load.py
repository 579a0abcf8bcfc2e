"""Load the base model: dtype, attention, quantization, new-token embeddings, gradient checkpointing."""

from __future__ import annotations

import logging
from typing import Any, Optional

from ft.config.model import ModelConfig, QuantizationConfig
from ft.errors import ConfigError
from ft.model.attention import resolve_attention
from ft.model.packed_attention import modifies_scores
from ft.model.precision import device, master_weights, resolve_dtype
from ft.model.quantize import bnb_config, guard_cpu_4bit
from ft.tokenizer.load import check_model_folder

log = logging.getLogger("ft")


def load_model(m: ModelConfig, q: QuantizationConfig, tokenizer: Any, *, full: bool, fsdp: bool,
               on_meta: bool = False, reward: bool = False, step_classes: Optional[int] = None) -> tuple[Any, bool]:
    """The base model in the training dtype (quantized when asked) with its vocabulary sized to the
    tokenizer, and whether the vocabulary grew. `full`: every weight will train; `fsdp`: FSDP will shard it;
    `on_meta`: built on the meta device, each process to read its share after FSDP shards it (ft.model.sharded);
    `reward`: a reward model, the decoder with a one-number head (a new `score` layer) on each text's last token;
    `step_classes`: a process reward model, the decoder with a head of that many classes on every token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    check_model_folder(m.base_model)
    dtype = resolve_dtype(m)
    attention, warning = resolve_attention(m)
    if warning:
        log.warning(warning)
    if m.trust_remote_code:
        log.warning("trust_remote_code: true: Python code shipped with %s runs in this process", m.base_model)
    kwargs: dict[str, Any] = {"trust_remote_code": m.trust_remote_code, "revision": m.revision_of_model}
    if attention:
        kwargs["attn_implementation"] = attention
    if m.experts_implementation:
        kwargs["experts_implementation"] = m.experts_implementation
    if m.base_model_config or m.model_config_overrides or m.cls_model_config:
        kwargs["config"] = model_config(m)
    if reward:
        if on_meta:
            raise ConfigError("a reward model on a 4-bit base is not supported under FSDP on several processes yet; use "
                              "DDP or DeepSpeed")
        kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
    if step_classes:
        if on_meta:
            raise ConfigError("a process reward model on a 4-bit base is not supported under FSDP on several processes "
                              "yet; use DDP or DeepSpeed")
        kwargs.update(num_labels=step_classes, pad_token_id=tokenizer.pad_token_id)
    auto = (AutoModelForSequenceClassification if reward else AutoModelForTokenClassification if step_classes
            else AutoModelForCausalLM)
    kwargs.update(dequantized(m))
    quant = bnb_config(q, dtype, fsdp=fsdp)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device()}
    # Full fine-tuning keeps fp32 master weights (autocast does the bf16/fp16 math), unless `bf16: full`
    load_dtype = torch.float32 if (full and master_weights(m, dtype)) else dtype
    done: list[str] = []  # quantize_moe_experts: the expert weights quantized as they loaded
    try:
        if m.reinit_weights and not on_meta:
            config = kwargs.pop("config", None) or model_config(m)
            kwargs.pop("revision", None)
            for key in ("num_labels", "pad_token_id"):
                if key in kwargs:
                    setattr(config, key, kwargs.pop(key))
            model = auto.from_config(config, dtype=load_dtype, **kwargs)
            log.info("reinit_weights: %s's architecture with fresh weights (the checkpoint's are not read)", m.base_model)
        elif on_meta:
            from ft.model.sharded import meta_model

            model = meta_model(m.base_model, load_dtype, kwargs, experts=q.quantize_moe_experts)
        elif q.quantize_moe_experts:
            from ft.model.experts import quantized_while_loading

            with quantized_while_loading(q) as quantized:
                model = auto.from_pretrained(m.base_model, dtype=load_dtype, **kwargs)
            done = quantized
            if done:
                log.info("quantize_moe_experts: %d expert weights stored in %d bits as they loaded", len(done), q.bits)
        else:
            model = auto.from_pretrained(m.base_model, dtype=load_dtype, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load the model `{m.base_model}`: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        # sdpa was chosen as the fallback for flash attention, but some architectures (Gemma-2, whose
        # logit soft-capping sdpa cannot express) have no sdpa path: eager is what remains.
        if kwargs.get("attn_implementation") != "sdpa" or "scaled_dot_product_attention" not in str(exc):
            raise
        log.warning("this architecture has no sdpa attention: using eager attention")
        kwargs["attn_implementation"] = "eager"
        model = auto.from_pretrained(m.base_model, dtype=load_dtype, **kwargs)
    rows = model.get_input_embeddings().weight.shape[0]
    grew = len(tokenizer) > rows
    if grew and on_meta:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the model's embeddings {model.get_input_embeddings().weight.shape[0]}: "
                          "adding tokens is not supported yet with a 4-bit base under FSDP on several processes; use tokens "
                          "the model has (e.g. an existing token as pad_token)")
    if grew:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=32 if m.resize_token_embeddings_to_32x else None)
        log.info("vocabulary grew to %d tokens: embeddings resized and trained", len(tokenizer))
    elif m.resize_token_embeddings_to_32x and rows % 32:
        model.resize_token_embeddings(rows, pad_to_multiple_of=32)
        log.info("embeddings padded from %d to %d rows (resize_token_embeddings_to_32x)", rows,
                 model.get_input_embeddings().weight.shape[0])
    model.config.use_cache = False
    if model.config._attn_implementation == "sdpa" and modifies_scores(model.config):
        # transformers before 5.2x loads Gemma-2 with sdpa, which ignores its attention logit soft-capping
        log.warning("%s soft-caps its attention scores, which sdpa cannot: using its eager attention", type(model).__name__)
        model.set_attn_implementation("eager")
    if q.quantize_moe_experts and not on_meta:  # on the meta device they were given their packed shape
        from ft.model.experts import quantize_experts

        if not quantize_experts(model, q) and not done:
            log.warning("quantize_moe_experts: %s has no experts' weights of 3 dimensions (its experts, if any, are "
                        "linear layers, quantized with the rest): nothing more to quantize", type(model).__name__)
    if q.bits == 4 and not torch.cuda.is_available():
        guard_cpu_4bit(model)
    if not on_meta:
        from ft.model.kernels import apply_liger

        applied = apply_liger(model, m)
        if applied:
            log.info("Liger's kernels: %s", ", ".join(applied))
    return model, grew


STORED = {"Mxfp4Config": "mxfp4", "FineGrainedFP8Config": "fp8"}  # model_quantization_config → the checkpoint's quant_method


def dequantized(m: ModelConfig) -> dict[str, Any]:
    """from_pretrained's arguments that read an MXFP4 or FP8 checkpoint back in the training dtype
    (model_quantization_config); none for a checkpoint stored in 16 bits, which loads as it is."""
    if not m.model_quantization_config:
        return {}
    import json
    from pathlib import Path

    import transformers

    path = Path(m.base_model_config or m.base_model) / "config.json"
    stored = (json.loads(path.read_text()).get("quantization_config") or {}) if path.is_file() else {}
    method = stored.get("quant_method")
    if method is None:
        log.info("model_quantization_config: %s is stored in 16 bits; nothing to dequantize", m.base_model)
        return {}
    if method != STORED[m.model_quantization_config]:
        raise ConfigError(f"`model_quantization_config: {m.model_quantization_config}`, and {m.base_model} is stored as "
                          f"`{method}`: set the config that matches it, or remove the key")
    config = getattr(transformers, m.model_quantization_config)(**(m.model_quantization_config_kwargs or {}))
    log.info("model_quantization_config: %s's %s weights read back in the training dtype", m.base_model, method)
    return {"quantization_config": config}


def model_config(m: ModelConfig) -> Any:
    """The model's config (from base_model_config when given, read by the class cls_model_config names when given)
    with model_config_overrides set on it; an override naming no setting of this model's config is refused
    (transformers would keep it and change nothing)."""
    import transformers

    reader = transformers.AutoConfig
    if m.cls_model_config:
        reader = getattr(transformers, m.cls_model_config, None)
        if not isinstance(reader, type) or not issubclass(reader, transformers.PretrainedConfig):
            raise ConfigError(f"`cls_model_config`: transformers has no config class `{m.cls_model_config}`; see the "
                              "model's config.json `architectures` for its model, whose config class ends in Config")
    remote = {"trust_remote_code": m.trust_remote_code} if reader is transformers.AutoConfig else {}
    config = reader.from_pretrained(m.base_model_config or m.base_model, revision=m.revision_of_model, **remote)
    for key, value in (m.model_config_overrides or {}).items():
        target = config if hasattr(config, key) else config.get_text_config()
        if not hasattr(target, key):
            raise ConfigError(f"`model_config`: `{key}` is not a setting of {type(config).__name__}; see the model's "
                              "config.json for the names it has")
        setattr(target, key, value)
    return config


def unfreeze_only(model: Any, patterns: tuple[str, ...], adapter: bool = False) -> int:
    """unfrozen_parameters: only parameters whose name matches a pattern train. Full fine-tuning: any weight of the
    model. With an adapter: of the adapter's own weights, those whose name (the base model's name of the layer they
    sit on, PEFT's `base_model.model.` prefix left out) matches; the base stays frozen (whole modules train through
    lora_modules_to_save). Returns how many tensors train; none matching is a mistake said with the model's names."""
    import re

    from ft.config.adapter import parameter_regex

    compiled = [re.compile(parameter_regex(p)) for p in patterns]
    count = 0
    candidates = [(n.removeprefix("base_model.model."), p) for n, p in model.named_parameters() if p.requires_grad or not adapter]
    for name, p in candidates:
        p.requires_grad_(any(c.match(name) for c in compiled))
        count += p.requires_grad
    if not count:
        names = [n for n, _ in candidates]
        which = "the adapter's weights of this model" if adapter else "the parameters of this model"
        raise ConfigError(f"`unfrozen_parameters` matches none of {which}, so nothing would train; their names look "
                          f"like {names[0]}, {names[len(names) // 2]}, {names[-1]}")
    if not adapter and not model.get_input_embeddings().weight.requires_grad:
        model.enable_input_require_grads()  # checkpointed blocks after frozen embeddings still need a grad path
    return count


def prepare_for_training(model: Any, q: QuantizationConfig, *, checkpointing: bool, adapter: bool,
                         checkpointed_layers: Optional[int] = None, selective: bool = False,
                         selective_sliding: bool = False) -> Any:
    """Freeze a quantized base and turn on gradient checkpointing.

    Unlike peft's prepare_model_for_kbit_training, the frozen 16-bit parameters of a quantized base
    (embeddings, head, norms) stay in the compute dtype: upcasting them to fp32 costs an 8B model 4 GB and
    runs the whole residual stream in fp32; the trainable LoRA weights are fp32 anyway (peft). It also keeps
    one dtype for every frozen parameter, which FSDP needs to flatten a unit.
    `selective`: the checkpointed layers keep their attention outputs (ft.model.selective), the sliding-window
    layers' only with `selective_sliding`.
    """
    if q.bits is not None:
        for p in model.parameters():
            p.requires_grad_(False)
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers ≥ 5.2x's name for it
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if adapter:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
        if checkpointed_layers is not None:
            checkpoint_first(model, checkpointed_layers)
        if selective:
            from ft.model.selective import save_attention

            save_attention(model, sliding_too=selective_sliding)
    return model


def checkpoint_first(model: Any, count: int) -> int:
    """gradient_checkpointing_layers: only the first `count` decoder layers recompute in the backward pass, the
    others keep their activations. Returns how many layers there are."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = layer.gradient_checkpointing and i < count
    log.info("gradient checkpointing: %d of %d layers recomputed in the backward pass", min(count, len(layers)), len(layers))
    return len(layers)


def use_packed_attention(model: Any, layout: str, probe: bool = True) -> tuple[str, str]:
    """Switch the model to an attention that keeps the rows of a flattened batch apart and costs what each
    row costs alone. Returns (the batch layout to train with, the kernel it runs in words): padded batches
    (and no kernel) when an unpacked run's model does not take the attention; an error for packing.
    `probe`: check with a forward that the model takes it (not on the meta device, where only transformers'
    own architectures are loaded, and they do)."""
    import torch

    from ft.model.packed_attention import describe_kernel, modifies_scores, packed_implementation, register, takes_its_attention

    register()
    current = model.config._attn_implementation
    chosen = packed_implementation(current, bool(getattr(model, "_supports_sdpa", True)), modifies_scores(model.config))
    if chosen != current:
        model.set_attn_implementation(chosen)  # for a model outside AttentionInterface this only warns
    if probe and not takes_its_attention(model):
        if chosen != current:
            model.set_attn_implementation(current)
        name = type(model).__name__
        if layout == "packed":
            raise ConfigError(f"sample_packing: true needs a model whose attention goes through transformers' attention "
                              f"interface; {name} computes its own, so packed rows would attend to each other. Set "
                              "sample_packing: false")
        log.info("padded batches: %s computes its own attention (not through transformers' attention interface), "
                 "so its rows cannot be laid end to end without padding", name)
        return "padded", ""
    c = model.config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kernel = describe_kernel(chosen, torch.cuda.is_available(), head_dim)
    log.info("%s batches: attention runs on each row (%s, %s)", layout, kernel, chosen)
    return layout, kernel
