"""A model's shape from its config.json alone (no weights, no torch): what the memory plan counts.

The architectures ft tests are modelled exactly: their linear layers by name and size (what LoRA targets
and what bitsandbytes quantizes), their norms, embeddings and head. Any other model type is refused in words
rather than guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ft.errors import ConfigError

MODELLED = ("llama", "mistral", "qwen2", "gemma2", "phi3")
# peft's own default LoRA targets when the config names none (peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"),
                   "gemma2": ("q_proj", "v_proj")}  # none for phi3: peft asks for target_modules
IA3_DEFAULT_TARGETS = {"llama": ("k_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
                       "qwen2": ("q_proj", "v_proj", "down_proj"), "gemma2": ("q_proj", "v_proj", "down_proj")}


@dataclass(frozen=True)
class Shape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    sliding_window: Optional[int] = None
    teacher: Optional["Shape"] = None  # a distillation run's live teacher
    attention_softcap: Optional[float] = None  # Gemma-2's soft-capped attention scores (no sdpa kernel computes them)
    logit_softcap: Optional[float] = None  # Gemma-2's soft-capped logits
    layer_types: tuple[str, ...] = ()  # each layer's attention (`full_attention`, `sliding_attention`), where it varies

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers: name → (in features, out features)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        if self.model_type == "phi3":  # fused projections
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def biases(self) -> int:
        """Bias elements per layer (Qwen2's q, k and v have biases)."""
        return self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim if self.model_type == "qwen2" else 0

    def norms(self) -> int:
        """Norm weights per layer (Gemma-2 has four norms per layer)."""
        return (4 if self.model_type == "gemma2" else 2) * self.hidden

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    def other_params(self) -> int:
        """Norms, biases and the final norm: never quantized."""
        return self.layers * (self.norms() + self.biases()) + self.hidden

    def total_params(self) -> int:
        return self.linear_params() + self.embedding_params() + self.head_params() + self.other_params()


def read_shape(source: str) -> Shape:
    """The shape of `base_model` (a local folder, or one in the hub's cache) from its config.json."""
    path = _config_path(source)
    c = json.loads(path.read_text())
    c = {**c, **c.get("text_config", {})}
    kind = c.get("model_type", "?")
    if kind not in MODELLED:
        raise ConfigError(f"`ft plan` models {', '.join(MODELLED)}; {source} is a `{kind}` model, which it does not "
                          "model (its estimate would be a guess)")
    heads = c["num_attention_heads"]
    gemma2 = kind == "gemma2"  # transformers' Gemma2Config defaults where config.json is silent
    return Shape(kind, c["hidden_size"], c["num_hidden_layers"], heads, c.get("num_key_value_heads") or heads,
                 c.get("head_dim") or c["hidden_size"] // heads, c["intermediate_size"], c["vocab_size"],
                 bool(c.get("tie_word_embeddings", gemma2)), c.get("sliding_window"),
                 attention_softcap=c.get("attn_logit_softcapping", 50.0 if gemma2 else None),
                 logit_softcap=c.get("final_logit_softcapping", 30.0 if gemma2 else None),
                 layer_types=_layer_types(c, kind))


def _layer_types(c: dict, kind: str) -> tuple[str, ...]:
    """Each layer's attention type as transformers reads the config: its `layer_types`, or what the config class
    derives without them (Gemma-2: sliding windows in every other layer from the first; Qwen2: from layer
    max_window_layers on, with use_sliding_window)."""
    layers = c["num_hidden_layers"]
    if c.get("layer_types"):
        return tuple(c["layer_types"])
    if kind == "gemma2":
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    if kind == "qwen2" and c.get("use_sliding_window") and c.get("sliding_window") is not None:
        return tuple("sliding_attention" if i >= c.get("max_window_layers", 28) else "full_attention" for i in range(layers))
    return ()


def _config_path(source: str) -> Path:
    local = Path(source)
    if local.is_dir():
        if (local / "config.json").is_file():
            return local / "config.json"
        raise ConfigError(f"`{source}` holds no config.json: `ft plan` reads the model's shape from it")
    if local.is_file() and local.name.endswith(".json"):
        return local
    import os

    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    snapshots = sorted((hub / f"models--{source.replace('/', '--')}" / "snapshots").glob("*/config.json"))
    if snapshots:
        return snapshots[-1]
    raise ConfigError(f"`ft plan` found no config.json for `{source}` (not a local folder, not in the hub's cache "
                      f"{hub}); download it once (`huggingface-cli download {source} config.json`)")
