"""The trainable parameters of each parameter-efficient method (ft.model.methods), counted as PEFT makes them,
from the model's shape alone (no library is imported: `ft plan` starts without torch)."""

from __future__ import annotations

from typing import Any, Callable

from ft.plan.shapes import Shape

# Per target linear layer (in features, out features) and the adapter section → its trainable parameters
PerLayer = Callable[[int, int, Any, str], int]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Two factors of `dimension` as near its square root as PEFT's LoKr picks them (smaller first)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    factor = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def _lokr(i: int, o: int, a: Any, name: str) -> int:
    (in_m, in_n), (out_l, out_k) = factorization(i), factorization(o)
    w1 = out_l * in_m  # decompose_both is off: w1 is whole
    r = a.lora_r
    w2 = out_k * in_n if r >= max(out_k, in_n) / 2 else r * (out_k + in_n)
    return w1 + w2


PER_LAYER: dict[str, PerLayer] = {
    "lora": lambda i, o, a, name: a.lora_r * (i + o),
    "qlora": lambda i, o, a, name: a.lora_r * (i + o),
    "loha": lambda i, o, a, name: 2 * a.lora_r * (i + o),
    "lokr": _lokr,
    "ia3": lambda i, o, a, name: i if name == "down_proj" else o,  # the MLP's down projection scales its input
    "vera": lambda i, o, a, name: a.lora_r + o,  # the shared random matrices are frozen
}


def trainable(cfg: Any, shape: Shape, targets: list[str]) -> int:
    """The method's trainable parameters on this shape (LoRA's weights on `targets` for the linear methods)."""
    a = cfg.adapter
    if a.adapter == "prompt_tuning":
        return a.num_virtual_tokens * shape.hidden
    if a.adapter == "prefix_tuning":
        token = shape.kv_heads * shape.head_dim  # the keys and values of every layer (grouped-query attention's width)
        out = shape.layers * 2 * token
        if not a.prefix_projection:
            return a.num_virtual_tokens * out
        width = a.prefix_encoder_hidden_size or token
        return a.num_virtual_tokens * token + (token * width + width) + (width * out + out)
    if a.adapter == "bottleneck":  # two adapters a layer, each down and up with biases
        h, b = shape.hidden, a.bottleneck_size
        return shape.layers * 2 * (h * b + b + b * h + h)
    per_layer = PER_LAYER[a.adapter or "lora"]
    return shape.layers * sum(per_layer(i, o, a, n) for n, (i, o) in shape.linears().items() if n in targets)
