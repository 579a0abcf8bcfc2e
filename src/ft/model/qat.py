"""Quantization-aware training (`qat:`, Axolotl's keys) with torchao: every linear layer but the output head (and
the input embeddings when asked) fake-quantizes its weights (and its input activations) in the forward pass;
the gradient passes the rounding straight through. The layers keep nn.Linear's weights and state-dict keys, so
checkpoints and the saved model are plain full-precision weights, ready for post-training quantization.

The output head stays unquantized: ft's chunked loss multiplies by its weight directly, and the head is the
layer that quantization methods usually leave in higher precision (Axolotl fake-quantizes it too)."""

from __future__ import annotations

import logging
from typing import Any

from ft.config.model import QatOptions
from ft.errors import ConfigError, UserError

log = logging.getLogger("ft")


def _fake_config(dtype: str, weights: bool, group_size: int) -> Any:
    import torch
    import torchao.quantization.qat as qat

    if dtype in ("int4", "int8"):
        bits = torch.int4 if dtype == "int4" else torch.int8
        if weights:
            return qat.IntxFakeQuantizeConfig(bits, group_size=group_size, is_symmetric=True)
        return qat.IntxFakeQuantizeConfig(bits, "per_token", is_symmetric=False)
    if dtype == "float8":
        return qat.Float8FakeQuantizeConfig()
    from torchao.prototype import qat as prototype

    if dtype == "nvfp4":
        return prototype.NVFP4FakeQuantizeConfig()
    return prototype.MXFakeQuantizeConfig()


def prepare(model: Any, options: QatOptions) -> int:
    """Swap the linear layers (and embeddings) for torchao's fake-quantized ones; returns how many layers."""
    import torch

    if {options.weight_dtype, options.activation_dtype} & {"nvfp4", "mxfp4"} and not torch.cuda.is_available():
        raise UserError(f"`qat` with {options.weight_dtype} runs float4 kernels, which need a CUDA GPU; use int4 or int8 "
                        "weights on this machine")
    try:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig
    except ImportError:
        raise ConfigError("`qat` needs torchao: pip install 'ft[qat]'") from None
    head = model.get_output_embeddings()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    config = QATConfig(activation_config=_fake_config(options.activation_dtype, False, options.group_size)
                       if options.activation_dtype else None,
                       weight_config=_fake_config(options.weight_dtype, True, options.group_size), step="prepare")
    quantize_(model, config, filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and m is not head)
    count = len(linear)
    if options.quantize_embedding:
        embedding = QATConfig(weight_config=_fake_config(options.weight_dtype, True, options.group_size), step="prepare")
        quantize_(model, embedding, filter_fn=lambda m, _: isinstance(m, torch.nn.Embedding))
        count += 1
    log.info("quantization-aware training: %d layers fake-quantize %s weights%s", count, options.weight_dtype,
             f" and {options.activation_dtype} activations" if options.activation_dtype else "")
    return count


def fake_quantizers(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__.endswith("FakeQuantizer")]


def set_fake_quantization(model: Any, on: bool) -> int:
    """Turn every fake quantizer on or off (fake_quant_after_n_steps); returns how many."""
    found = fake_quantizers(model)
    for quantizer in found:
        quantizer.enabled = on
    return len(found)
