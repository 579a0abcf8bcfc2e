"""`grouped_attention_backward`: each attention layer's backward pass runs over its key/value heads a few at a time,
each piece with the query heads that read it, instead of over all heads in one kernel call.

A flash attention backward allocates, for the whole call, the query gradient accumulated in fp32 and, with grouped
keys, a key and a value gradient per query head before summing them per key head: 32 bytes a token per query-head
dimension of Llama 3.1 8B (4 GiB per layer at 131,072 tokens), beside the gradients it returns. Heads are
independent, so the same gradients come out of one call per group of key/value heads (at most 8 calls), each
allocating its group's share. The forward runs whole, as before, and keeps only q, k and v (not its output: o_proj
keeps that); the backward recomputes each group's output and log-sum-exp with the kernel's forward and runs the
kernel's backward on it, so it costs one more attention forward per layer, the price of the memory. It works with
any kernel ft's varlen attention runs (torch's varlen flash kernel on a GPU, sdpa row by row elsewhere), and the
gradients are the whole call's.

ft marks each attention module (ft.model.packed_attention.GROUPED_BACKWARD); ft's varlen attention and context
parallelism's read the mark.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from ft.config.training import grouped_backward_calls as calls

log = logging.getLogger("ft")


def mark(model: Any) -> int:
    """Mark every attention module of the model; returns how many were marked."""
    from ft.model.packed_attention import GROUPED_BACKWARD, PER_ROW_EAGER, VARLEN

    marked = 0
    for module in model.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "config"):
            setattr(module, GROUPED_BACKWARD, True)
            marked += 1
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kv = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 1)
    log.info("grouped_attention_backward: %d attention layers run their backward in %d calls of %d key/value heads",
             marked, calls(kv), kv // calls(kv))
    chosen = model.config._attn_implementation
    if chosen == PER_ROW_EAGER:
        log.warning("grouped_attention_backward: this model modifies its attention scores (soft-capping), which only its "
                    "own eager attention computes here, so its backward runs whole")
    elif chosen != VARLEN:
        log.warning("grouped_attention_backward: the model's attention is %s, not ft's varlen attention (which runs "
                    "packed and padding-free batches: sample_packing, padding_free), so its backward runs whole", chosen)
    return marked


def grouped(q: Any, k: Any, v: Any, kernel: Callable[[Any, Any, Any], Any]) -> Any:
    """`kernel(q, k, v)` (tokens × heads × head_dim each), its backward run group by group."""
    return _function().apply(q, k, v, kernel)


@functools.lru_cache(maxsize=None)
def _function() -> Any:
    import torch

    class GroupedBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, kernel: Callable[..., Any]) -> Any:
            ctx.kernel = kernel
            device = q.device.type  # the backward's recompute runs under the forward's autocast, as checkpointing's does
            ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
            ctx.save_for_backward(q, k, v)
            return kernel(q, k, v)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            q, k, v = ctx.saved_tensors
            n = calls(k.shape[1])
            qh, kh = q.shape[1] // n, k.shape[1] // n
            wanted = [torch.empty_like(t) if need else None for t, need in zip((q, k, v), ctx.needs_input_grad)]
            for i in range(n):
                heads = (slice(i * qh, (i + 1) * qh), slice(i * kh, (i + 1) * kh), slice(i * kh, (i + 1) * kh))
                # contiguous pieces: the kernels see what they would see from a model with these heads alone
                pieces = [t[:, s].detach().contiguous().requires_grad_() for t, s in zip((q, k, v), heads)]
                device, dtype, enabled = ctx.autocast
                with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                    out = ctx.kernel(*pieces)
                    got = torch.autograd.grad(out, pieces, grad[:, heads[0]].contiguous())
                for whole, part, s in zip(wanted, got, heads):
                    if whole is not None:
                        whole[:, s] = part
                del out, got, pieces
            return (*wanted, None)

    return GroupedBackward
