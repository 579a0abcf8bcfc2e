"""`fp8: true` (Axolotl's key): FP8 training with torchao's float8 linear layers, as accelerate's FP8 recipe sets it
up for Axolotl: every linear layer but the model's first and last (and any whose sizes are not multiples of 16,
which float8 matmuls cannot take) computes its matmuls in float8 (e4m3 inputs and weights, e5m2 gradients, one
dynamic scale per tensor); the weights are kept and updated in full precision, so what is saved is a plain model.
Fast on GPUs with FP8 matmuls (Ada, Hopper); elsewhere it runs, slowly.

Axolotl's `fp8_enable_fsdp_float8_all_gather` (FSDP2 gathering the weights already in float8) is accepted and
not applied: on two CPU ranks torchao's float8 gathering gave losses 2e-3 away from one process over the same
micro batches at every other step (and precomputing the scales after each step changed nothing), where gathering
in the training dtype follows one process within 1e-4 (tests/test_fsdp_cpu.py).
"""

from __future__ import annotations

from typing import Any

from ft.errors import ConfigError


def convert(model: Any) -> int:
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

    config = Float8LinearConfig()  # tensorwise scaling, as accelerate's recipe for Axolotl
    convert_to_float8_training(model, config=config, module_filter_fn=chosen)
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules())
