"""The `optimizer:` names ft accepts, each mapped to the transformers `optim` that implements it.

Kept as data (no torch import) so that `ft validate` can check a name without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from ft.registry import Registry


@dataclass(frozen=True)
class Optimizer:
    hf_name: str  # a value of transformers.training_args.OptimizerNames
    needs_bitsandbytes: bool
    summary: str


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")

OPTIMIZERS.add("adamw_torch", Optimizer("adamw_torch", False, "PyTorch AdamW; fp32 states (8 bytes/param)"))
OPTIMIZERS.add(
    "adamw_torch_fused", Optimizer("adamw_torch_fused", False, "PyTorch fused AdamW kernel (GPU); same memory")
)
OPTIMIZERS.add(
    "adamw_bnb_8bit",
    Optimizer("adamw_bnb_8bit", True, "bitsandbytes 8-bit AdamW; 2 bytes/param of state"),
    aliases=("adamw_8bit",),
)
OPTIMIZERS.add("paged_adamw_8bit", Optimizer("paged_adamw_8bit", True, "8-bit AdamW with paged states (GPU)"))
OPTIMIZERS.add("paged_adamw_32bit", Optimizer("paged_adamw_32bit", True, "32-bit AdamW with paged states (GPU)"))
OPTIMIZERS.add("lion_8bit", Optimizer("lion_8bit", True, "bitsandbytes 8-bit Lion"))
OPTIMIZERS.add("paged_lion_8bit", Optimizer("paged_lion_8bit", True, "8-bit Lion with paged states (GPU)"))
OPTIMIZERS.add("adafactor", Optimizer("adafactor", False, "Adafactor; factored second moments, least memory"))
OPTIMIZERS.add("muon", Optimizer("adamw_torch", False, "Muon (orthogonalized momentum) on the hidden weight matrices, "
                                  "AdamW on embeddings, head and vectors; full fine-tuning (ft.train.muon)"))
OPTIMIZERS.add("sgd", Optimizer("sgd", False, "plain SGD; no optimizer state"))
OPTIMIZERS.add("adagrad", Optimizer("adagrad", False, "Adagrad"))
OPTIMIZERS.add("rmsprop", Optimizer("rmsprop", False, "RMSprop"))
