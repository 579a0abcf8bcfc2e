"""`selective_checkpointing`: a checkpointed decoder layer keeps its attention kernel's outputs (the attention
output and the softmax statistics its backward reads) and recomputes the rest in the backward pass: the
projections, norms, rotary embedding and MLP. Attention is the part of the recompute that grows with the
square of the row length, so at long context this removes most of checkpointing's extra compute for one
hidden-state-sized tensor per layer (`ft plan` counts it).

torch's selective-checkpoint policy decides op by op at the dispatcher: the outputs of an attention kernel are
stored in the forward pass and handed back, not recomputed, when the backward pass replays the layer. Every
attention kernel is an op whose name says so (sdpa's flash, memory-efficient, cuDNN and CPU kernels, PyTorch's
varlen attention, flash-attn's ops); attention that a model computes from matmuls and a softmax of its own
(eager attention, Gemma-2's soft-capping) has no such op and is recomputed as before. The sliding-window layers
of a hybrid model (its config's `layer_types`) recompute their attention, which costs only the window per
token, unless `selective_checkpointing_sliding_window` saves them too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ft.config.training import SLIDING_LAYER_TYPES

log = logging.getLogger("ft")


def saves(op: Any) -> bool:
    """Whether the op's outputs are kept: an attention kernel's forward."""
    name = op.name().split("::")[-1]
    return ("attention" in name or "attn" in name) and "backward" not in name


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if saves(op) else CheckpointPolicy.PREFER_RECOMPUTE


def _contexts() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_policy)


def layer_type(layer: Any) -> str:
    """The layer's attention type as its config names it (`full_attention`, `sliding_attention`...); "" if none."""
    return next((m.layer_type for m in layer.modules() if isinstance(getattr(m, "layer_type", None), str)), "")


def save_attention(model: Any, sliding_too: bool) -> int:
    """Make every checkpointed decoder layer keep its attention outputs (sliding-window layers only with
    `sliding_too`). Returns how many layers keep them."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    chosen = [m for m in layers if sliding_too or layer_type(m) not in SLIDING_LAYER_TYPES]
    for layer in chosen:
        layer._gradient_checkpointing_func = functools.partial(layer._gradient_checkpointing_func, context_fn=_contexts)
    log.info("selective_checkpointing: %d of %d recomputed layers keep their attention outputs%s", len(chosen),
             len(layers), "" if len(chosen) == len(layers) else " (the sliding-window layers recompute theirs)")
    return len(chosen)
