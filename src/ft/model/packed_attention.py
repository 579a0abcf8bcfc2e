"""Attention for packed sequences whose cost follows each row's own length.

A packed batch is one long sequence of several rows, its position ids restarting at 0 at each row. sdpa
with a block-diagonal mask would pay attention over the whole bin (the bin's length squared); these
functions instead split the queries, keys and values at the row boundaries and run the model's own sdpa
or eager attention on each row with a plain causal mask, so the cost is the sum of the rows' squares.

They are registered in transformers' AttentionInterface under the names below. transformers builds no
mask for an attention name it does not know in its mask interface, so nothing bin-sized is ever made.
With flash-attn installed, ft uses flash_attention_2 instead, whose varlen kernel does the same from the
position ids.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

log = logging.getLogger("ft")

PER_ROW_SDPA = "ft_packed_sdpa"
PER_ROW_EAGER = "ft_packed_eager"


def row_spans(position_ids: Any) -> list[tuple[int, int]]:
    """(start, end) of each row in a 1-D tensor of position ids that restart at 0."""
    import torch

    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [int(position_ids.shape[0])]
    return list(zip(starts, ends))


def _causal_mask(module: Any, n: int, like: Any) -> Any:
    import torch

    mask = torch.full((n, n), torch.finfo(like.dtype).min, dtype=like.dtype, device=like.device).triu(1)
    window = getattr(module, "sliding_window", None)
    if window:
        mask = mask + torch.full_like(mask, torch.finfo(like.dtype).min).tril(-window)
        mask = mask.clamp(min=torch.finfo(like.dtype).min)
    return mask[None, None]


def _per_row(inner: Callable[..., Any], needs_mask: bool) -> Callable[..., Any]:
    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
        import torch

        position_ids = kwargs.get("position_ids")
        batch, _, length, _ = query.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=query.device).expand(batch, length)
        outputs = []
        for b in range(batch):
            pieces = []
            for start, end in row_spans(position_ids[b]):
                q, k, v = (t[b : b + 1, :, start:end] for t in (query, key, value))
                mask = _causal_mask(module, end - start, q) if needs_mask else None
                out, _ = inner(module, q, k, v, mask, **{k_: v_ for k_, v_ in kwargs.items() if k_ != "position_ids"})
                pieces.append(out)  # (1, rows, heads, head_dim)
            outputs.append(torch.cat(pieces, dim=1))
        return torch.cat(outputs, dim=0), None

    return attention


def _model_eager(module: Any) -> Callable[..., Any]:
    """The eager attention of the module's own model file (it knows soft-capping and the like)."""
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as own
    return own


def _eager(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    return _model_eager(module)(module, query, key, value, mask, **kwargs)


def register() -> None:
    """Add the per-row attention functions to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(PER_ROW_SDPA, _per_row(sdpa_attention_forward, needs_mask=False))
    AttentionInterface.register(PER_ROW_EAGER, _per_row(_eager, needs_mask=True))


def packed_implementation(requested: str | None, supports_sdpa: bool) -> str:
    """The attention to train packed batches with, given what the config resolved to."""
    if requested and requested.startswith("flash_attention"):
        return requested  # flash-attn's varlen path reads the row boundaries from the position ids
    if requested == "eager" or not supports_sdpa:
        return PER_ROW_EAGER
    return PER_ROW_SDPA
