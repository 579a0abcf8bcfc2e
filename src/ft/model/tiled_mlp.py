"""`tiled_mlp`: each decoder layer's MLP runs over the sequence a tile of tokens at a time, its wide
intermediate (14,336 wide in Llama 3.1 8B: 2.3 GB per tensor at 80k tokens) recomputed tile by tile in the
backward pass, so one tile's intermediates are alive at once instead of the whole sequence's.

The MLP is per token, so the result is the same; the price is one more MLP forward per step. It replaces the
instance's `forward` attribute of each `.mlp` module, as chunked_rms_norm does the norms' (ft.model.rms_norm): the
module tree, and so the names in saved adapters, stays as it is; and it says so in the log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

log = logging.getLogger("ft")


def _tiled(forward: Callable[..., Any], tokens: int, hidden: Any, *args: Any, **kwargs: Any) -> Any:
    import torch
    from torch.utils.checkpoint import checkpoint

    if hidden.shape[-2] <= tokens or not torch.is_grad_enabled():
        return forward(hidden, *args, **kwargs)
    pieces = [checkpoint(forward, piece, *args, use_reentrant=False, **kwargs) for piece in hidden.split(tokens, dim=-2)]
    return torch.cat(pieces, dim=-2)


def tile_mlps(model: Any, tokens: int) -> int:
    """Make every decoder layer's `.mlp` run `tokens` positions at a time; returns how many were changed."""
    changed = 0
    for name, module in model.named_modules():
        if name.endswith(".mlp") and not isinstance(module.forward, functools.partial):
            module.forward = functools.partial(_tiled, module.forward, tokens)
            changed += 1
    log.info("tiled MLP: %d MLPs run %d tokens at a time (their intermediates recomputed per tile)", changed, tokens)
    return changed
