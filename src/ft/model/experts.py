"""`quantize_moe_experts`: a mixture-of-experts model's routed experts, which transformers 5 stores as 3-D
parameters (one tensor for all experts, outside any nn.Linear, so bitsandbytes' loading leaves them in 16 bits),
quantized like the rest of the base: 4-bit by bitsandbytes' own parametrization (the config's quant type and
double quantization), 8-bit per row as LLM.int8 stores a weight. The model reads each as a dequantized tensor when
its forward runs, so the layers' code is unchanged; the experts are frozen (LoRA trains the linear layers). Each is
quantized as transformers loads it (quantized_while_loading), so a model whose 16-bit experts would not fit loads."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

from ft.config.model import QuantizationConfig

log = logging.getLogger("ft")

ORDER = "ft_expert_order"  # attribute of a module whose experts' weights were quantized: their names in its own order


def is_experts(path: str, module: Any) -> bool:
    """Whether a module holds routed experts (its name or class says so)."""
    return "expert" in path.lower().rsplit(".", 1)[-1] or "expert" in type(module).__name__.lower()


def expert_parameters(model: Any) -> list[tuple[str, Any, str]]:
    """(qualified name, module, parameter name) of every routed experts' weight still in 16 bits: a parameter of
    three or more dimensions of a module whose path names experts."""
    found = []
    for path, module in model.named_modules():
        if not is_experts(path, module):
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.ndim >= 3:
                found.append((f"{path}.{name}", module, name))
    return found


@lru_cache(maxsize=None)
def _int8_parametrization() -> Any:
    import bitsandbytes as bnb
    import torch

    class Int8Rows(torch.nn.Module):
        """The int8 rows back to the weight: each row times its absmax / 127 (bitsandbytes' own dequantizer)."""

        def __init__(self, row_stats: Any, shape: tuple[int, ...], dtype: Any) -> None:
            super().__init__()
            self.register_buffer("row_stats", row_stats)
            self.shape, self.dtype = shape, dtype

        def forward(self, stored: Any) -> Any:
            rows = bnb.functional.int8_vectorwise_dequant(stored.reshape(-1, self.shape[-1]), self.row_stats)
            return rows.reshape(self.shape).to(self.dtype)

    return Int8Rows


def remember_order(module: Any) -> None:
    """Note the order of a module's experts' weights before the first of them leaves its parameters (for
    lora_over_quantized)."""
    if not hasattr(module, ORDER):
        setattr(module, ORDER, tuple(n for n, p in module._parameters.items() if p is not None and p.ndim >= 3))


def quantize_one(module: Any, name: str, q: QuantizationConfig) -> int:
    """Quantize `module`'s 3-D parameter `name` in place to the base's bits; returns the bytes it saves."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.nn.parametrize import replace_parameter_4bit
    from torch.nn.utils import parametrize

    weight = getattr(module, name)
    remember_order(module)
    before = weight.numel() * weight.element_size()
    if q.bits == 4:
        replace_parameter_4bit(module, name, compress_statistics=q.bnb_4bit_use_double_quant, quant_type=q.bnb_4bit_quant_type)
    else:
        shape, dtype = tuple(weight.shape), weight.dtype
        rows, stats, _ = bnb.functional.int8_vectorwise_quant(weight.detach().reshape(-1, shape[-1]).to(torch.float16))
        setattr(module, name, torch.nn.Parameter(rows.reshape(shape), requires_grad=False))
        parametrize.register_parametrization(module, name, _int8_parametrization()(stats, shape, dtype), unsafe=True)
    stored = module.parametrizations[name].original
    stored.requires_grad_(False)
    return before - stored.numel() * stored.element_size()


def quantize_experts(model: Any, q: QuantizationConfig) -> int:
    """Quantize every routed experts' weight of `model` still in 16 bits in place; returns how many."""
    found = expert_parameters(model)
    saved = sum(quantize_one(module, name, q) for _, module, name in found)
    if found:
        log.info("quantize_moe_experts: %d expert weights stored in %d bits after loading (%.2f GB less)", len(found),
                 q.bits, saved / 1e9)
    return len(found)


@contextmanager
def quantized_while_loading(q: QuantizationConfig) -> Iterator[list[str]]:
    """Around from_pretrained: each experts' weight is quantized as soon as transformers sets it in the model, so the
    16-bit experts never sit in memory together, and transformers' warm-up allocation of the whole model's 16-bit
    size is skipped. Yields the names quantized this way. (transformers 5's loader sets each parameter through
    core_model_loading.set_param_for_module, looked up at each call: wrapped for the duration only.)"""
    import transformers.core_model_loading as loading
    import transformers.modeling_utils as modeling

    set_param, warmup = loading.set_param_for_module, modeling.caching_allocator_warmup
    done: list[str] = []

    def set_and_quantize(model: Any, target: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        result = set_param(model, target, value, *args, **kwargs)
        path, _, name = target.rpartition(".")
        module = model.get_submodule(path) if path else model
        if value.ndim >= 3 and name in module._parameters and is_experts(path, module):
            quantize_one(module, name, q)
            done.append(target)
        return result

    loading.set_param_for_module = set_and_quantize
    modeling.caching_allocator_warmup = lambda *args, **kwargs: None
    try:
        yield done
    finally:
        loading.set_param_for_module, modeling.caching_allocator_warmup = set_param, warmup


def lora_over_quantized(model: Any) -> int:
    """LoRA on quantized experts' weights (lora_target_parameters with quantize_moe_experts). PEFT adds its update as
    a parametrization after the dequantizing one at each forward and removes it after; two things in peft 0.21 go
    wrong when the weight is parametrized already, and each such wrapper is given its own way here:
    - removal looks for the update by one class only (`_LoraParameterProxy`, not the `_LoraFactorsProxy` it uses for
      a stack of experts), so the update would stay and pile up: the wrapper removes the last parametrization of its
      weight, the one it appended;
    - a wrapper inside another adds its update inside the outer one's parametrization cache, where its weight was
      read (and kept) without the update, so the forward would run without it and its LoRA get no gradient: the
      wrapper drops that cached value once its update is in place.
    And PEFT nests the wrappers of one module's weights in the order of their names when they are parametrized, in
    the module's own order when not: the wrappers are put in the module's order, so the adapter's names are those of
    the same adapter on 16-bit experts (it loads there, e.g. to merge).
    Returns how many wrappers sit on quantized weights."""
    from contextlib import contextmanager
    from types import MethodType

    from peft.tuners.lora.layer import ParamWrapper
    from torch.nn.utils import parametrize

    def remove_own(self: Any) -> None:
        chain = self.get_base_layer().parametrizations[self.parameter_name]
        del chain[len(chain) - 1]

    def with_fresh_cache(activate: Any) -> Any:
        @contextmanager
        def active(self: Any, adapters: Any) -> Iterator[None]:
            with activate(adapters):
                parametrize._cache.pop((id(self.get_base_layer()), self.parameter_name), None)
                yield

        return active

    count = 0
    for module in model.modules():
        if isinstance(module, ParamWrapper) and module.parameter_name in getattr(module.get_base_layer(), "parametrizations", {}):
            module._remove_parametrizations = MethodType(remove_own, module)
            module._activate_lora = MethodType(with_fresh_cache(module._activate_lora), module)
            count += 1
    _nest_in_module_order(model)
    return count


def _nest_in_module_order(model: Any) -> None:
    from peft.tuners.lora.layer import ParamWrapper

    tops = [(path, m) for path, m in model.named_modules() if isinstance(m, ParamWrapper)
            and not isinstance(model.get_submodule(path.rpartition(".")[0]) if "." in path else model, ParamWrapper)]
    for path, top in tops:
        chain, bottom = [top], top.base_layer
        while isinstance(bottom, ParamWrapper):
            chain.append(bottom)
            bottom = bottom.base_layer
        order = getattr(bottom, ORDER, None)
        if order is None or len(chain) < 2:
            continue
        inner_first = sorted(chain, key=lambda w: order.index(w.parameter_name))
        below = bottom
        for wrapper in inner_first:
            wrapper.base_layer = below
            below = wrapper
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, below)
