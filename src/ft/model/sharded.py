"""FSDP + QLoRA for a base larger than one GPU: each process loads only its own share of the 4-bit weights.

An ordinary 4-bit load quantizes the whole model on each process's GPU (bitsandbytes quantizes where it
loads), so every GPU holds the whole 4-bit model (about 37 GB for a 70B model) before FSDP shards anything; and
no broadcast carries a 4-bit weight's quantization state, which is not a parameter. Under FSDP2 with several
processes ft loads instead:

1. `meta_model`: every process builds the model on the meta device (no memory), each 4-bit weight given its
   packed shape so that FSDP shards it as it will shard the real one; the buffers computed from the config
   (rotary frequencies) are computed for real;
2. the trainable weights are real: LoRA's are initialised from the seed and their names
   (ft.model.adapter.seed_lora_weights, as in every run, so a sharded run starts where a single process does),
   weights trained in full beside LoRA are read from the checkpoint (`load_trainable`);
3. accelerate's FSDP2 preparation shards the model; what is on the meta device stays there;
4. `load_shards`, before the first step: each process reads the checkpoint one tensor at a time, quantizes it
   on its GPU as bitsandbytes would, keeps the module's quantization state (one scale per 64 weights, whole on
   every process) and copies only its own slice of the packed weight into its shard.

No process ever holds more than its share plus the tensor being read, and nothing is broadcast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from ft.errors import ConfigError

log = logging.getLogger("ft")

QUANTIZE = "ft_quantize"  # attribute of a 4-bit module on the meta device: how to quantize its weight


def shards_at_load(fsdp: bool, fsdp_version: int, bits: Any, world: int) -> bool:
    """Whether the base is loaded a share per process: a 4-bit base under FSDP2 with several processes."""
    return fsdp and fsdp_version == 2 and bits == 4 and world > 1


def meta_model(base_model: str, load_dtype: Any, kwargs: dict[str, Any], experts: bool = False) -> Any:
    """The quantized model on the meta device, its 4-bit weights in their packed shape (with `experts`, the routed
    experts' 3-D weights too: quantize_moe_experts)."""
    from transformers import AutoModelForCausalLM

    if kwargs.get("trust_remote_code"):
        raise ConfigError("a 4-bit base under FSDP is loaded a share per process, which needs one of transformers' own "
                          "architectures: remove `trust_remote_code`")
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=load_dtype, **{**kwargs, "device_map": {"": "meta"}})
    packed = _pack_shapes(model)
    if experts:
        packed += _pack_experts(model, kwargs["quantization_config"])
    _real_buffers(model)
    log.info("4-bit base under FSDP: built on the meta device; each process will read and quantize only its share "
             "of the %d 4-bit weights", packed)
    return model


def _pack_shapes(model: Any) -> int:
    """Give each 4-bit weight on the meta device the packed shape bitsandbytes will give it."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        w = module.weight
        how = {"blocksize": w.blocksize or 64, "compress_statistics": w.compress_statistics, "quant_type": w.quant_type,
               "quant_storage": w.quant_storage, "dtype": w.dtype}
        # the packed shape, from bitsandbytes' own shape function for the quantize op
        packed, _ = torch.ops.bitsandbytes.quantize_4bit.default(torch.empty(w.shape, dtype=w.dtype, device="meta"),
                                                                 how["blocksize"], how["quant_type"], how["quant_storage"])
        module.weight = bnb.nn.Params4bit(torch.empty(packed.shape, dtype=how["quant_storage"], device="meta"),
                                          requires_grad=False, blocksize=how["blocksize"],
                                          compress_statistics=how["compress_statistics"], quant_type=how["quant_type"],
                                          quant_storage=how["quant_storage"], module=module, bnb_quantized=True)
        setattr(module, QUANTIZE, how)
        count += 1
    return count


def _pack_experts(model: Any, bnb: Any) -> int:
    """Give each routed experts' 3-D weight on the meta device (ft.model.experts) its packed 4-bit shape, stored in
    the 4-bit layers' storage dtype (under FSDP the training dtype: one dtype per unit), behind bitsandbytes'
    dequantizing parametrization; its quantization state comes with its share (load_shards)."""
    import torch
    from bitsandbytes.nn.parametrize import Bnb4bitParametrization
    from torch.nn.utils import parametrize

    from ft.model.experts import expert_parameters, remember_order

    count = 0
    for _, module, name in expert_parameters(model):
        w = getattr(module, name)
        how = {"blocksize": 64, "compress_statistics": bnb.bnb_4bit_use_double_quant, "quant_type": bnb.bnb_4bit_quant_type,
               "quant_storage": bnb.bnb_4bit_quant_storage, "dtype": w.dtype}
        packed, _ = torch.ops.bitsandbytes.quantize_4bit.default(torch.empty(w.shape, dtype=w.dtype, device="meta"),
                                                                 how["blocksize"], how["quant_type"], how["quant_storage"])
        remember_order(module)
        setattr(module, name, torch.nn.Parameter(torch.empty(packed.shape, dtype=how["quant_storage"], device="meta"),
                                                 requires_grad=False))
        dequantize = Bnb4bitParametrization(None)
        setattr(dequantize, QUANTIZE, how)
        parametrize.register_parametrization(module, name, dequantize, unsafe=True)
        count += 1
    return count


def _real_buffers(model: Any) -> None:
    """Buffers the model computes from its config (not in the checkpoint), computed for real: a fresh module of
    the same class, built from the config on the CPU, gives them."""
    import torch

    for name, module in model.named_modules():
        missing = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
        if not missing:
            continue
        try:
            with torch.device("cpu"):
                fresh = type(module)(config=getattr(module, "config", model.config))
        except Exception:
            raise ConfigError(f"cannot load this model a share per process: the buffer `{name}.{missing[0]}` is computed "
                              f"by {type(module).__name__}, which ft cannot rebuild") from None
        for n in missing:
            module._buffers[n] = fresh._buffers[n]


def checkpoint_key(parameter: str) -> str:
    """The checkpoint's name for a parameter of the (PEFT-wrapped) model."""
    import re

    name = parameter.removeprefix("base_model.model.")
    for part in (".base_layer", ".original_module", ".modules_to_save.default"):
        name = name.replace(part, "")
    return re.sub(r"\.parametrizations\.([^.]+)\.original$", r".\1", name)  # a parametrized weight (experts)


class Checkpoint:
    """The safetensors files of a model folder, read one tensor at a time."""

    def __init__(self, folder: str, model: Any) -> None:
        root = Path(folder)
        index = root / "model.safetensors.index.json"
        if index.exists():
            self.files = {k: root / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (root / "model.safetensors").exists():
            from safetensors import safe_open

            with safe_open(str(root / "model.safetensors"), "pt") as f:
                self.files = {k: root / "model.safetensors" for k in f.keys()}
        else:
            raise ConfigError(f"a 4-bit base under FSDP is read a share per process from safetensors files; {folder} has "
                              "none (model.safetensors or model.safetensors.index.json)")
        self.folder = folder
        # a weight tied to another is saved once, under the other's name
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        tied = getattr(base, "_tied_weights_keys", None)
        ties = getattr(base.config.get_text_config(), "tie_word_embeddings", False)
        self.aliases = dict(tied) if ties and isinstance(tied, dict) else {}
        self.converters = _converters(base)

    def read(self, key: str) -> Any:
        from safetensors import safe_open

        if key not in self.files:
            key = self.aliases.get(key, key)
        if key not in self.files and (made := self._converted(key)) is not None:
            return made
        if key not in self.files:
            raise ConfigError(f"{self.folder}: no tensor `{key}` in the checkpoint, which this model needs; loading a share "
                              "per process reads the checkpoint's names as they are (converted checkpoints are not supported)")
        with safe_open(str(self.files[key]), "pt") as f:
            return f.get_tensor(key)


    def _converted(self, key: str) -> Any:
        """A tensor transformers makes as it loads from several of the checkpoint's (a MoE's experts stored one by
        one, stacked into one 3-D weight), made by the same converter that transformers registers for the model:
        its source names with `*` for the expert's number, its operations in order. None when none makes `key`."""
        import re

        for converter in self.converters:
            sources, targets = list(converter._original_source_patterns), list(converter._original_target_patterns)
            target = next((t for t in targets if key.endswith("." + t) and re.fullmatch(r"[\w.]+", t)), None)
            if target is None or any(s.count("*") != 1 or not re.fullmatch(r"[\w.*]+", s) for s in sources):
                continue
            prefix = key[: -len(target)]
            tensors: dict[str, Any] = {}
            for source in sources:
                head, tail = source.split("*")
                pattern = re.compile(re.escape(prefix + head) + r"(\d+)" + re.escape(tail))
                found = sorted((int(m.group(1)), k) for k in self.files if (m := pattern.fullmatch(k)))
                if not found:
                    break
                tensors[source] = [self.read(k) for _, k in found]
            else:
                for op in converter.operations:
                    tensors = op.convert(tensors, source_patterns=sources, target_patterns=targets)
                return tensors[target]
        return None


def _converters(model: Any) -> list[Any]:
    """transformers' converters of checkpoint tensors for this model (several tensors into one)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model, add_legacy=False) if isinstance(t, WeightConverter)]


def _meta_parameters(model: Any, only_trainable: bool) -> Iterator[tuple[str, Any, str, Any]]:
    """(module name, module, parameter name, parameter) for each parameter still on the meta device, once
    (a tied weight under the first module that holds it)."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for n, p in list(module.named_parameters(recurse=False)):
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.is_meta and (p.requires_grad or not only_trainable) and id(p) not in seen:
                seen.add(id(p))
                yield module_name, module, n, p


def load_trainable(model: Any, base_model: str) -> int:
    """Weights trained in full beside LoRA (the copies PEFT trains: embeddings when tokens were added,
    lora_modules_to_save), read from the checkpoint whole, before FSDP shards them with the rest."""
    import torch

    checkpoint = None
    count = 0
    for module_name, module, n, p in list(_meta_parameters(model, only_trainable=True)):
        checkpoint = checkpoint or Checkpoint(base_model, model)
        value = checkpoint.read(checkpoint_key(f"{module_name}.{n}")).to(p.dtype)
        setattr(module, n, torch.nn.Parameter(value, requires_grad=True))
        count += 1
    return count


def load_shards(model: Any, base_model: str, offload: bool) -> None:
    """Fill every parameter FSDP left on the meta device with this process's share, read from the checkpoint
    one tensor at a time; 4-bit weights are quantized on this process's device first."""
    import torch
    from torch.distributed.tensor import distribute_tensor
    from torch.nn.utils.parametrize import ParametrizationList

    from ft.model.precision import device

    compute = device()
    home = torch.device("cpu") if offload else compute
    checkpoint = Checkpoint(base_model, model)
    filled = 0
    by_module: dict[int, list[tuple[str, str, Any]]] = {}
    modules: dict[int, Any] = {}
    for module_name, module, n, p in _meta_parameters(model, only_trainable=False):
        by_module.setdefault(id(module), []).append((module_name, n, p))
        modules[id(module)] = module
    for key, entries in by_module.items():
        module = modules[key]
        real_buffers = {n: b for n, b in module.named_buffers(recurse=False) if not b.is_meta}
        module.to_empty(device=home, recurse=False)
        module._buffers.update(real_buffers)
        how = getattr(module, QUANTIZE, None)
        dequantize = module[0] if isinstance(module, ParametrizationList) and hasattr(module[0], QUANTIZE) else None
        for module_name, n, _ in entries:
            p = getattr(module, n)
            full = checkpoint.read(checkpoint_key(f"{module_name}.{n}"))
            if how is not None and n == "weight":
                full, module.quant_state = quantize(full.to(compute, how["dtype"]), how)
            elif dequantize is not None:  # an experts' weight: its packed bytes and their state, kept whole here
                full, dequantize.quant_state = quantize(full.to(compute, getattr(dequantize, QUANTIZE)["dtype"]),
                                                        getattr(dequantize, QUANTIZE))
            else:
                full = full.to(compute, p.dtype)
            share = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            with torch.no_grad():
                p.to_local().copy_(share)
            del full, share
            filled += 1
    log.info("4-bit base under FSDP: this process read its share of %d weights from %s", filled, base_model)


def quantize(weight: Any, how: dict[str, Any]) -> tuple[Any, Any]:
    """A weight's packed 4-bit form and its quantization state, as bitsandbytes' Params4bit makes them."""
    import bitsandbytes as bnb

    return bnb.functional.quantize_4bit(weight.contiguous(), blocksize=how["blocksize"],
                                        compress_statistics=how["compress_statistics"], quant_type=how["quant_type"],
                                        quant_storage=how["quant_storage"])

