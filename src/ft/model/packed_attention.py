"""Attention for flattened batches: rows laid end to end in one sequence (packed bins, or the rows of an
unpacked micro batch without padding), each row attending only to itself.

The collator computes the row boundaries once per batch (`boundaries`: cumulative lengths and the longest
row, under the names transformers' flash-attention path reads, `cu_seq_lens_q` ... `max_length_k`) and
every layer receives them: no host sync and no Python loop over rows per layer on a GPU. Two kernels keep
one contract, (q, k, v as tokens × heads × head_dim, cumulative lengths, longest row, scale, window) →
tokens × query heads × head_dim, with optional key boundaries of their own (context parallelism: a row's
queries are the last of its keys), and `attend` picks one:
- `torch_varlen`: PyTorch's own varlen flash attention (`torch.nn.attention.varlen.varlen_attn`, CUDA,
  fp16/bf16, head_dim ≤ 256), no extra package;
- `per_row`: each row through sdpa with its own causal (and sliding-window) mask; the CPU path, and the
  reference the CPU tests hold the glue to.
Gemma-2's logit soft-capping fits neither: `PER_ROW_EAGER` runs the model's own eager attention per row.
It is chosen from the model's config when the model modifies its attention scores, and `varlen_attention`
hands any call that carries such a modification (`softcap`, attention sinks) to it all the same, whatever
the transformers version resolved the model's attention to: the kernels never drop what the model computes.
All are registered in transformers' AttentionInterface; transformers builds no mask for a name it does
not know in its mask interface, so nothing bin-sized is ever made. With flash-attn installed, ft uses
flash_attention_2, which reads the same boundaries.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import weakref
from itertools import accumulate
from typing import Any, Callable, Optional

log = logging.getLogger("ft")

VARLEN = "ft_varlen"
PER_ROW_EAGER = "ft_packed_eager"
MAX_HEAD_DIM = 256  # the flash kernel's limits: head_dim at most 256, a multiple of 8
HEAD_DIM_MULTIPLE = 8
# attention-function keyword arguments that change the scores in ways the varlen kernels cannot express:
# Gemma-2's logit soft-capping, and the attention sinks of gpt-oss-style models
SCORE_MODIFIERS = ("softcap", "s_aux", "sinks")
# config attributes that make a model pass one of them
SCORE_MODIFYING_CONFIG = ("attn_logit_softcapping",)
GROUPED_BACKWARD = "ft_grouped_backward"  # ft.model.attention_backward marks the modules whose backward runs grouped


def boundaries(lengths: list[int]) -> dict[str, Any]:
    """The batch keys that tell every layer where the rows of a flattened sequence start and end."""
    import torch

    cu = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _bounds(query: Any, kwargs: dict[str, Any]) -> tuple[Any, int]:
    """(cumulative lengths, longest row) from the collator; derived here only when no collator made them
    (a padded batch: each batch row is one sequence; or position ids restarting at 0: one host sync)."""
    import torch

    if kwargs.get("cu_seq_lens_q") is not None:
        return kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    batch, _, length, _ = query.shape
    position_ids = kwargs.get("position_ids")
    if batch == 1 and position_ids is not None:
        starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
        starts = starts if starts and starts[0] == 0 else [0, *starts]
        lengths = [b - a for a, b in zip(starts, starts[1:] + [length])]
        return boundaries(lengths)["cu_seq_lens_q"].to(query.device), max(lengths)
    return torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device), length


def _window(module: Any, kwargs: dict[str, Any]) -> Optional[int]:
    """A sliding window of W keys (the query's own included), as transformers' masks count it; or None."""
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    return int(window) if window else None


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


_last_edges: list[Any] = [None, []]  # (a weak reference to the last boundary tensor read, its values)


def _edges(cu: Any) -> list[int]:
    """The row boundaries as Python ints for the per-row paths. Every layer of a forward (and its recompute)
    receives the same tensor, so it is read to the host once per batch, not once per layer."""
    if isinstance(cu, list):
        return cu
    ref, values = _last_edges
    if ref is None or ref() is not cu:
        values = cu.tolist()
        _last_edges[:] = [weakref.ref(cu), values]
    return values


def kernel_available(head_dim: int, window: Optional[int]) -> bool:
    """Whether torch's varlen kernel can run this attention (it exists in torch ≥ 2.10; windows from 2.11)."""
    params = _varlen_parameters()
    return (bool(params) and head_dim <= MAX_HEAD_DIM and head_dim % HEAD_DIM_MULTIPLE == 0
            and (window is None or "window_size" in params))


def modifies_scores(config: Any) -> bool:
    """Whether a model (its text config) modifies attention scores beyond what the varlen kernels compute."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(getattr(text, name, None) is not None for name in SCORE_MODIFYING_CONFIG)


def torch_varlen(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float, window: Optional[int],
                 cu_k: Any = None, longest_k: Optional[int] = None) -> Any:
    """PyTorch's varlen flash attention, called in the form the installed version has. `cu_k`, `longest_k`: keys
    of other lengths than the queries' (context parallelism: a slice's queries against their documents' keys up
    to them), the queries being each run's last (the flash kernel's causal mask is aligned to the bottom right).

    Grouped-query attention: the flash kernel reads query head h from kv head h // (query heads / kv heads)
    itself, so k and v go in unrepeated. torch ≥ 2.12 asks for `enable_gqa=True` (and checks the head counts);
    before it the wrapper passes any head counts through to the same kernel. Repeating them would save the
    copies for the backward pass: 4x the k/v memory on Llama-3-8B."""
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_parameters()
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:  # torch ≥ 2.11: causal is (-1, 0); a window of W keys is (W - 1, 0)
        kwargs["window_size"] = (window - 1 if window else -1, 0)
    else:  # torch 2.10
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1] and "enable_gqa" in params:  # torch ≥ 2.12
        kwargs["enable_gqa"] = True
    if cu_k is None:
        cu_k, longest_k = cu, longest
    return varlen_attn(q, k, v, cu, cu_k, longest, longest_k, **kwargs)


def per_row(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float, window: Optional[int], dropout: float = 0.0,
            cu_k: Any = None) -> Any:
    """The same contract as `torch_varlen`, row by row through sdpa (the CPU path and the reference). Boundaries are
    tensors or lists; with `cu_k`, each row's queries are its last keys' (a causal mask aligned to the bottom right).
    Grouped keys go in unrepeated (sdpa's enable_gqa: query head h reads kv head h // groups), and a single row's
    output is sdpa's own, uncopied: what the backward keeps is what the GPU's varlen kernel keeps (but for the
    bottom-right mask, which sdpa takes as a tensor)."""
    import torch
    import torch.nn.functional as F

    grouped = q.shape[1] != k.shape[1]
    edges = _edges(cu)
    key_edges = edges if cu_k is None else _edges(cu_k)
    pieces = []
    for start, end, key_start, key_end in zip(edges, edges[1:], key_edges, key_edges[1:]):
        qi = q[start:end].transpose(0, 1)[None]
        ki, vi = (t[key_start:key_end].transpose(0, 1)[None] for t in (k, v))
        n, before = end - start, (key_end - key_start) - (end - start)  # keys before the first query
        mask = None
        if before or (window is not None and window < n):
            i, j = torch.arange(n, device=q.device)[:, None] + before, torch.arange(key_end - key_start, device=q.device)[None, :]
            mask = (j <= i) & ((j > i - window) if window is not None else True)
        out = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, is_causal=mask is None, scale=scale, dropout_p=dropout,
                                             enable_gqa=grouped)
        pieces.append(out[0].transpose(0, 1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)


def attend(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float, window: Optional[int], dropout: float = 0.0,
           cu_k: Any = None, longest_k: Optional[int] = None, grouped: bool = False) -> Any:
    """(tokens, heads, d) queries of rows laid end to end against their keys: torch's varlen kernel on a GPU where it
    applies (fp16/bf16; fp32 inputs computed in bf16 and returned in fp32), per_row elsewhere. `grouped`: the backward
    pass a few key/value heads at a time (ft.model.attention_backward; not with dropout, which a recompute would
    draw anew)."""
    import torch

    if grouped and dropout == 0.0 and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        from ft.model.attention_backward import grouped as run_grouped

        return run_grouped(q, k, v, functools.partial(_kernel, cu=cu, longest=longest, scale=scale, window=window,
                                                      cu_k=cu_k, longest_k=longest_k))
    return _kernel(q, k, v, cu, longest, scale, window, dropout, cu_k, longest_k)


def _kernel(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float, window: Optional[int], dropout: float = 0.0,
            cu_k: Any = None, longest_k: Optional[int] = None) -> Any:
    import torch

    aligned = cu_k is None or "window_size" in _varlen_parameters()  # torch 2.10's causal flag: square rows only
    if q.is_cuda and dropout == 0.0 and aligned and kernel_available(q.shape[-1], window):
        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):  # e.g. fp32 activations under peft's k-bit preparation
            half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            q, k, v = q.to(half), k.to(half), v.to(half)
        return torch_varlen(q, k, v, cu, longest, scale, window, cu_k, longest_k).to(dtype)
    return per_row(q, k, v, cu, longest, scale, window, dropout, cu_k)


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function form: query (batch, heads, tokens, d), output (batch, tokens, heads, d)."""
    if any(kwargs.get(name) is not None for name in SCORE_MODIFIERS):
        return per_row_eager(module, query, key, value, attention_mask, **kwargs)
    batch, heads, length, dim = query.shape
    cu, longest = _bounds(query, kwargs)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    scale = kwargs.get("scaling") or getattr(module, "scaling", None) or dim**-0.5
    window = _window(module, kwargs)
    out = attend(q, k, v, cu, longest, scale, window, float(kwargs.get("dropout") or 0.0),
                 grouped=getattr(module, GROUPED_BACKWARD, False))
    return out.reshape(batch, length, heads, dim), None


def _model_eager(module: Any) -> Callable[..., Any]:
    """The eager attention of the module's own model file (it knows soft-capping and the like)."""
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as own
    return own


def per_row_eager(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
    """The model's eager attention on each row, for what the varlen kernels cannot express (soft-capping)."""
    import torch

    batch, _, length, _ = query.shape
    cu, _ = _bounds(query, kwargs)
    window = _window(module, kwargs)
    inner = _model_eager(module)
    rest = {k: v for k, v in kwargs.items() if k not in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    flat = [t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[-1]) for t in (query, key, value)]
    edges = _edges(cu)
    pieces = []
    for start, end in zip(edges, edges[1:]):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in flat)
        n = end - start
        i = torch.arange(n, device=q.device)
        allowed = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - window) if window else True)
        mask = torch.zeros((n, n), dtype=q.dtype, device=q.device).masked_fill(~allowed, torch.finfo(q.dtype).min)
        out, _ = inner(module, q, k, v, mask[None, None], **rest)
        pieces.append(out[0])  # (row tokens, heads, d)
    return torch.cat(pieces, dim=0).reshape(batch, length, *pieces[0].shape[1:]), None


def register() -> None:
    """Add the attention functions to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionInterface.register(PER_ROW_EAGER, per_row_eager)


def packed_implementation(requested: str | None, supports_sdpa: bool, scores_modified: bool = False) -> str:
    """The attention to train flattened batches with, given what the config resolved to and whether the
    model modifies its scores (soft-capping: only its own eager attention, or flash-attn, computes it)."""
    if requested and requested.startswith("flash_attention"):
        return requested  # flash-attn's varlen path reads the same boundaries, and applies softcap
    if requested == "eager" or not supports_sdpa or scores_modified:
        return PER_ROW_EAGER
    return VARLEN


def takes_its_attention(model: Any) -> bool:
    """Whether the model's attention goes through transformers' AttentionInterface, so that the function set
    by `set_attn_implementation` (ft's, or flash-attn's) is what runs: a probe forward of two 2-token rows laid
    end to end must call it. A model whose attention ignores the interface (remote code, older architectures)
    would run its own causal attention over the whole flattened batch, and rows would see each other."""
    import torch
    from transformers import AttentionInterface

    name = model.config._attn_implementation
    original = AttentionInterface._global_mapping.get(name)
    if original is None:
        return False
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    device = next(model.parameters()).device
    probe = {"input_ids": torch.ones((1, 4), dtype=torch.long, device=device),
             "position_ids": torch.tensor([[0, 1, 0, 1]], device=device),
             **{k: v.to(device) if torch.is_tensor(v) else v for k, v in boundaries([2, 2]).items()}}
    was_training = model.training
    AttentionInterface.register(name, counted)
    model.eval()
    try:
        with torch.no_grad():
            model(**probe)
    finally:
        AttentionInterface.register(name, original)
        model.train(was_training)
    return bool(calls)


def describe_kernel(implementation: str, on_gpu: bool, head_dim: int) -> str:
    """Which kernel a flattened batch really runs through, in words for the log and summary.json."""
    if implementation.startswith("flash"):
        return "flash-attn varlen"
    if implementation == PER_ROW_EAGER:
        return "per-row eager"
    if on_gpu and kernel_available(head_dim, None):
        return "torch varlen flash attention"
    return "per-row sdpa"
