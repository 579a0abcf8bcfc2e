"""Whether a plan fits a GPU, and when it does not, the changes that make it fit, ranked by memory saved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ft.plan.estimate import Plan, estimate
from ft.plan.shapes import Shape


@dataclass(frozen=True)
class Change:
    what: str  # in words, naming the config keys
    plan: Plan


def _with(cfg: Any, **sections: dict[str, Any]) -> Any:
    """A copy of the config with some keys of some sections changed (no validation: the plan only reads them)."""
    return cfg.model_copy(update={name: getattr(cfg, name).model_copy(update=keys) for name, keys in sections.items()})


def candidate_changes(cfg: Any, gpus: int) -> list[tuple[str, Any, int]]:
    """(words, changed config, GPUs) for each change ft would suggest for this config."""
    t, a, q, d = cfg.training, cfg.adapter, cfg.quantization, cfg.data
    out: list[tuple[str, Any, int]] = []
    if not t.gradient_checkpointing:
        out.append(("gradient_checkpointing: true", _with(cfg, training={"gradient_checkpointing": True}), gpus))
    if t.selective_checkpointing:
        out.append(("selective_checkpointing: false", _with(cfg, training={"selective_checkpointing": False}), gpus))
    if t.gradient_checkpointing and not t.activation_offloading:
        out.append(("activation_offloading: true", _with(cfg, training={"activation_offloading": True}), gpus))
    elif not t.gradient_checkpointing:
        out.append(("gradient_checkpointing and activation_offloading: true",
                    _with(cfg, training={"gradient_checkpointing": True, "activation_offloading": True}), gpus))
    if a.adapter is None:
        out.append(("adapter: lora (lora_target_linear: true)", _with(cfg, adapter={"adapter": "lora", "lora_target_linear": True}), gpus))
    if q.bits != 4:
        out.append(("adapter: qlora with load_in_4bit: true",
                    _with(cfg, adapter={"adapter": "qlora", "lora_target_linear": a.lora_target_linear or a.adapter is None},
                          quantization={"load_in_4bit": True, "load_in_8bit": False}), gpus))
    if "8bit" not in t.optimizer and t.optimizer != "sgd":
        out.append(("optimizer: adamw_bnb_8bit", _with(cfg, training={"optimizer": "adamw_bnb_8bit"}), gpus))
    if t.micro_batch_size > 1:
        half = t.micro_batch_size // 2
        out.append((f"micro_batch_size: {half} with gradient_accumulation_steps: {t.gradient_accumulation_steps * 2}",
                    _with(cfg, training={"micro_batch_size": half, "gradient_accumulation_steps": t.gradient_accumulation_steps * 2}), gpus))
    if not t.chunked_cross_entropy:
        out.append(("chunked_cross_entropy: true", _with(cfg, training={"chunked_cross_entropy": True}), gpus))
    if not t.tiled_mlp:
        out.append(("tiled_mlp: true", _with(cfg, training={"tiled_mlp": True}), gpus))
    if not t.chunked_rms_norm and not cfg.model.liger_rms_norm:
        out.append(("chunked_rms_norm: true", _with(cfg, training={"chunked_rms_norm": True}), gpus))
    flash_attn = cfg.model.attention_request in ("flash_attention_2", "flash_attention_3")
    if not t.grouped_attention_backward and not flash_attn:  # the same plan where attention is the model's eager one
        out.append(("grouped_attention_backward: true", _with(cfg, training={"grouped_attention_backward": True}), gpus))
    if not flash_attn:  # lowers the plan where the
        # eager attention keeps its scores (Gemma-2's soft-capping); the same plan elsewhere, so not suggested there
        out.append(("flash_attention: true (pip install ft[flash])",
                    _with(cfg, model={"flash_attention": True, "attn_implementation": None}), gpus))
    if d.sequence_len > 512:
        out.append((f"sequence_len: {d.sequence_len // 2}", _with(cfg, data={"sequence_len": d.sequence_len // 2}), gpus))
    if gpus == 1:
        for n in (2, 4, 8):
            fsdp = _with(cfg, distributed={"fsdp": ("full_shard", "auto_wrap")})
            out.append((f"FSDP full_shard over {n} GPUs (--num-processes {n})", fsdp, n))
    return out


def ranked_changes(cfg: Any, shape: Shape, gpus: int, plan: Plan, longest_batch: Optional[int] = None) -> list[Change]:
    """The changes that lower the peak, most saved first."""
    changes = []
    for words, changed, n in candidate_changes(cfg, gpus):
        new = estimate(changed, shape, n, longest_batch if changed.data.sequence_len == cfg.data.sequence_len else None)
        if new.peak < plan.peak:
            changes.append(Change(words, new))
    return sorted(changes, key=lambda c: c.plan.peak)


def longest_batch(lengths: list[int], layout: str, micro_batch_size: int, sequence_len: int, pad_to: bool) -> int:
    """The token slots of the largest micro batch the data makes: packed bins fill up to sequence_len each,
    padded rows pad to the longest row of the batch (or to sequence_len), padding-free rows lie end to end."""
    longest = sorted(lengths, reverse=True)[:micro_batch_size]
    if layout == "packed" or pad_to:
        return micro_batch_size * sequence_len
    if layout == "padded":
        return micro_batch_size * longest[0]
    return sum(longest)


def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest value in [low, high] for which `fits` holds (0 if none), assuming it holds below a fit."""
    if not fits(low):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def fewest_checkpointed_layers(cfg: Any, shape: Shape, gpus: int, memory: int) -> Optional[int]:
    """With gradient checkpointing: the fewest decoder layers recomputed (the first N; the others keep their
    activations, which saves their recompute) whose plan fits `memory`; None when even every layer does not."""
    fits = [n for n in range(shape.layers + 1)
            if estimate(_with(cfg, training={"gradient_checkpointing_layers": n}), shape, gpus).peak <= memory]
    return fits[0] if fits else None


def fullest_micro_batch(cfg: Any, shape: Shape, gpus: int, memory: int) -> tuple[int, int]:
    """fill_micro_batch: (micro_batch_size, gradient_accumulation_steps) of the same product, so the same rows
    (bins) per optimizer step, with the most in a micro batch whose plan fits `memory`; as written when no more fit."""
    t = cfg.training
    total = t.micro_batch_size * t.gradient_accumulation_steps
    sizes = [m for m in range(t.micro_batch_size, total + 1) if total % m == 0 and m % t.micro_batch_size == 0]
    fits = [m for m in sizes if estimate(_with(cfg, training={"micro_batch_size": m, "gradient_accumulation_steps": total // m}),
                                         shape, gpus).peak <= memory]
    size = max(fits, default=t.micro_batch_size)
    return size, total // size


def largest_settings(cfg: Any, shape: Shape, gpus: int, memory: int) -> tuple[int, int]:
    """The largest micro_batch_size (at this sequence_len) and sequence_len (at micro batch 1) that fit."""
    batch = largest(lambda b: estimate(_with(cfg, training={"micro_batch_size": b}), shape, gpus).peak <= memory, 1, 1024)
    length = largest(lambda n: estimate(_with(cfg, training={"micro_batch_size": 1}, data={"sequence_len": n}), shape, gpus).peak <= memory,
                     8, 1 << 20)
    return batch, length
