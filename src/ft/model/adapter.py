"""PEFT adapters: which modules LoRA wraps, its settings, and continuing from a saved adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from ft.config.adapter import AdapterConfig
from ft.errors import ConfigError

log = logging.getLogger("ft")


def linear_module_names(model: Any) -> list[str]:
    """Names (last part) of every linear layer, quantized ones included, except the output head."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:
        pass
    head = model.get_output_embeddings()
    names = {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, linear_types) and module is not head}
    return sorted(names)


def score_head(model: Any) -> str:
    """The name of a reward (sequence-classification) model's head, "" for a causal LM."""
    name = type(model).__name__
    classifies = name.endswith("ForSequenceClassification") or name.endswith("ForTokenClassification")
    return "score" if classifies and hasattr(model, "score") else ""


def embedding_module_names(model: Any) -> list[str]:
    """Names of the input and output embeddings (trained in full when new tokens were added)."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.split(".")[-1] for name, module in model.named_modules() if id(module) in wanted})


def lora_config(a: AdapterConfig, targets: Optional[list[str]], modules_to_save: Optional[list[str]]) -> Any:
    """The PEFT config of LoRA (and QLoRA) from the adapter section (ft.model.methods.lora)."""
    from ft.model.methods import METHODS

    return METHODS.get("lora").build(a, targets, modules_to_save, "")


REFERENCE = "reference"  # the frozen copy of a continued adapter, a preference loss's reference
INITIAL = "initial-adapter"  # PiSSA / OLoRA: the adapter as it started, in output_dir (for the conversion on save)


def save_initial_adapter(model: Any, output_dir: str) -> str:
    """PiSSA / OLoRA: keep the adapter as it starts (with `init_lora_weights` True in its config, as PEFT's
    conversion wants), so that the final save can turn the trained one into a plain LoRA of the original base."""
    folder = Path(output_dir) / INITIAL
    config = model.peft_config["default"]
    kind, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(str(folder))
    finally:
        config.init_lora_weights = kind
    return str(folder)


def apply_adapter(a: AdapterConfig, model: Any, new_tokens: bool, seed: int, on_meta: bool = False,
                  frozen_copy: bool = False, zero3: bool = False) -> Any:
    """Wrap the model with LoRA (or load `lora_model_dir` to continue training it); print the counts. New LoRA
    weights are initialised from `seed` and their names (`seed_lora_weights`). `on_meta`: the base is on the
    meta device (ft.model.sharded), the LoRA weights are made real on the CPU. `frozen_copy`: the continued
    adapter is also loaded frozen, as REFERENCE (a preference loss's reference). `lora_fused` gives LoRA's linear
    layers the in-place update (ft.model.fused_lora), except under ZeRO-3 (`zero3`), which gathers A and B only
    through their own modules' hooks."""
    from peft import get_peft_model

    if on_meta and (a.lora_model_dir or a.peft_use_dora):
        key = "lora_model_dir" if a.lora_model_dir else "peft_use_dora"
        raise ConfigError(f"`{key}` is not supported yet with a 4-bit base under FSDP on several processes (each loads "
                          f"only its share of the base); remove `{key}`, or train on one process")
    if a.lora_model_dir:
        check_adapter_base(Path(a.lora_model_dir), model)
        try:
            from ft.model.loftq import load_adapter

            model = load_adapter(model, Path(a.lora_model_dir), is_trainable=True)
            if frozen_copy:
                model.load_adapter(a.lora_model_dir, adapter_name=REFERENCE, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"`lora_model_dir`: the adapter in {a.lora_model_dir} does not fit base_model "
                              f"{model.config._name_or_path}: {str(exc).splitlines()[0][:300]}") from None
    else:
        from ft.config.adapter import is_regex

        written = a.lora_target_modules or ()
        check_targets(written, model)
        targets = set(regex_targets(written[0], model)) if any(map(is_regex, written)) else set(written)
        if a.lora_target_linear:
            targets |= set(linear_module_names(model))
        to_save = set(a.lora_modules_to_save or ())
        head = score_head(model)
        if head:  # a reward model's new head trains in full beside the adapter, and is saved with it
            targets.discard(head)
            to_save.add(head)
        if new_tokens:
            to_save |= set(embedding_module_names(model))
        if a.lora_target_parameters:
            check_parameters(a.lora_target_parameters, model)
        from ft.model.methods import METHODS

        method = METHODS.get(a.adapter or "lora")
        if method.apply is not None:  # a method of ft's own (not PEFT's)
            if head:
                raise ConfigError(f"`adapter: {a.adapter}` cannot train a reward model's head; use `adapter: lora`")
            if new_tokens:
                raise ConfigError(f"`adapter: {a.adapter}` trains no embeddings, and the vocabulary grew (new tokens need "
                                  "trained embeddings): use `adapter: lora`, or tokens the model has")
            model = method.apply(a, model, seed)
            trainable, total = count_parameters(model)
            log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
            return model
        if not method.targets_linear:
            targets = set()
        config = method.build(a, sorted(targets) or ([] if a.lora_target_parameters else None), sorted(to_save) or None,
                              str(model.config._name_or_path))
        if a.lora_target_parameters:
            config.target_parameters = parametrized_names(a.lora_target_parameters, model)
        if head:  # PEFT's wrapper for a model that scores texts or tokens (no generation)
            config.task_type = "TOKEN_CLS" if type(model).__name__.endswith("ForTokenClassification") else "SEQ_CLS"
        model = get_peft_model(model, config)
        if a.lora_target_parameters:
            from ft.model.experts import lora_over_quantized

            lora_over_quantized(model)
        if a.peft.loftq_config:
            from ft.model.loftq import initialise

            initialise(model, a.peft.loftq_config.loftq_bits, a.peft.loftq_config.loftq_iter)
        elif not a.peft_init_lora_weights:  # PiSSA and OLoRA start from the base weights themselves
            seed_lora_weights(model, seed)
    if a.lora_fused and not zero3:
        from ft.model.fused_lora import fuse

        log.debug("lora_fused: %d LoRA layers add their update in place", fuse(model))
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def seed_lora_weights(model: Any, seed: int) -> int:
    """Initialise every new LoRA pair as PEFT does (A uniform in ±1/sqrt(fan_in), B zero), A drawn from a
    generator seeded by the run's seed and the module's name: the same in every process and whatever the
    loading path drew from torch's generator before, so a base loaded a share per process (ft.model.sharded,
    where PEFT's own values are lost on the meta device) starts where a single process does. Returns how many."""
    import math
    import zlib

    import torch

    count = 0
    for name, module in model.named_modules():
        pairs = getattr(module, "lora_A", None)
        if not isinstance(pairs, torch.nn.ModuleDict):
            continue
        for adapter, down in pairs.items():
            up = module.lora_B[adapter]
            shape = tuple(down.weight.shape)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            bound = 1 / math.sqrt(shape[1])
            values = (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound
            for layer, value in ((down, values), (up, torch.zeros(tuple(up.weight.shape)))):
                w = layer.weight
                place = torch.device("cpu") if w.is_meta else w.device
                layer.weight = torch.nn.Parameter(value.to(place, w.dtype), requires_grad=w.requires_grad)
            count += 1
    return count


def regex_targets(pattern: str, model: Any) -> list[str]:
    """The whole names of the modules a lora_target_modules regular expression matches (as PEFT matches one)."""
    import re

    matched = [name for name, _ in model.named_modules() if name and re.fullmatch(pattern, name)]
    if not matched:
        example = next((n for n in (linear_names_in_full(model)) if ".layers." in n), "")
        raise ConfigError(f"`lora_target_modules`: `{pattern}` matches no module of this model; its module names "
                          f"look like {example}")
    return matched


def linear_names_in_full(model: Any) -> list[str]:
    short = set(linear_module_names(model))
    return [name for name, _ in model.named_modules() if name.split(".")[-1] in short]


def check_targets(targets: tuple[str, ...], model: Any) -> None:
    """Every name in lora_target_modules names modules of this model (peft matches the end of a module's
    dotted name); otherwise say which linear layers it has."""
    from ft.config.adapter import is_regex

    if any(map(is_regex, targets)):
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        have = ", ".join(linear_module_names(model))
        raise ConfigError(f"`lora_target_modules`: {', '.join(f'`{m}`' for m in missing)} is not a module of this model; "
                          f"its linear layers are {have} (or set lora_target_linear: true for all of them)")


def check_parameters(targets: tuple[str, ...], model: Any) -> None:
    """Every name in lora_target_parameters names parameters of this model (peft matches the end of the name)."""
    import re

    # a parametrized weight (experts stored quantized: ft.model.experts) is listed as <module>.parametrizations.<name>.original
    names = [re.sub(r"\.parametrizations\.([^.]+)\.original$", r".\1", name) for name, _ in model.named_parameters()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise ConfigError(f"`lora_target_parameters`: {', '.join(f'`{m}`' for m in missing)} is not a parameter of this "
                          f"model; its parameters are named like {names[len(names) // 2]}")


def parametrized_names(targets: tuple[str, ...], model: Any) -> list[str]:
    """lora_target_parameters for PEFT: PEFT finds a parametrized weight (experts stored quantized, ft.model.experts)
    only by its module's full name, so each such weight a target names by its end is added by its full name."""
    names = list(targets)
    for path, module in model.named_modules():
        for name in getattr(module, "parametrizations", {}):
            full = f"{path}.{name}"
            if full not in names and any(full == t or full.endswith(f".{t}") for t in targets):
                names.append(full)
    return names


# What must agree between an adapter's base and the model it is loaded into.
BASE_SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_adapter_base(folder: Path, model: Any) -> None:
    """The adapter folder holds an adapter, trained on a base of this model's shape (when its base is here to read)."""
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise ConfigError(f"`lora_model_dir`: no adapter in {folder} (adapter_config.json is missing)")
    recorded = json.loads(config.read_text()).get("base_model_name_or_path") or ""
    base_config = Path(recorded) / "config.json"
    if not recorded or not base_config.is_file():
        return
    theirs = json.loads(base_config.read_text())
    ours = model.config.to_dict()
    differ = [k for k in BASE_SHAPE if k in theirs and theirs.get(k) != ours.get(k)]
    if differ:
        detail = ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here" for k in differ)
        raise ConfigError(f"`lora_model_dir`: the adapter in {folder} was trained on {recorded}, whose shape differs "
                          f"from base_model {model.config._name_or_path} ({detail}); use that base or another adapter")


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        # a 4-bit weight packs two values per byte of its storage, whatever the storage dtype
        n = p.numel() * p.element_size() * 2 if p.__class__.__name__ == "Params4bit" else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
