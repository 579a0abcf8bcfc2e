"""`fp8: true` (Axolotl's key): FP8 training with torchao's float8 linear layers, as accelerate's FP8 recipe sets it
up for Axolotl: every linear layer but the model's first and last (and any whose sizes are not multiples of 16,
which float8 matmuls cannot take) computes its matmuls in float8 (e4m3 inputs and weights, e5m2 gradients, one
dynamic scale per tensor); the weights are kept and updated in full precision, so what is saved is a plain model.
`fp8_enable_fsdp_float8_all_gather` lets FSDP2 gather the weights already in float8 (and recompute them in the
backward pass, as Axolotl sets it). Fast on GPUs with FP8 matmuls (Ada, Hopper); elsewhere it runs, slowly.
"""

from __future__ import annotations

from typing import Any

from ft.errors import ConfigError


def convert(model: Any, fsdp_float8_all_gather: bool) -> int:
    """Turn the chosen linear layers into torchao's Float8Linear, in place; returns how many."""
    import torch

    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ConfigError("`fp8` needs torchao: pip install 'ft[qat]'") from None
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ends = {linears[0], linears[-1]} if linears else set()

    def chosen(module: Any, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return True  # containers: torchao walks into them
        return name not in ends and module.in_features % 16 == 0 and module.out_features % 16 == 0

    config = Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp_float8_all_gather,
                                force_recompute_fp8_weight_in_bwd=fsdp_float8_all_gather)
    convert_to_float8_training(model, config=config, module_filter_fn=chosen)
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules())
