"""What `ft validate` prints: the resolved config and the values derived from it."""

from __future__ import annotations

from ft.config import FtConfig, resolved_yaml
from ft.model.attention import describe_precision, resolve_attention


def derived(cfg: FtConfig, world_size: int = 1) -> dict[str, str]:
    t, a, q, d = cfg.training, cfg.adapter, cfg.quantization, cfg.distributed
    attention, warning = resolve_attention(cfg.model)
    out = {
        "effective batch size": f"{cfg.effective_batch_size(world_size)} "
        f"(micro batch {t.micro_batch_size} × accumulation {t.gradient_accumulation_steps} × {world_size} process"
        f"{'es' if world_size != 1 else ''})",
        "precision": describe_precision(cfg.model),
        "attention": (attention or "the model's default (sdpa where supported)") + (f" ({warning})" if warning else ""),
    }
    if a.adapter:
        targets = "all linear layers" if a.lora_target_linear else ", ".join(a.lora_target_modules or ("PEFT's default",))
        base = f"{q.bits}-bit" if q.bits else "16-bit"
        out["method"] = f"{a.adapter} r={a.lora_r} alpha={a.lora_alpha:g} on {targets}, {base} base"
    else:
        out["method"] = "full fine-tuning"
    if d.backend and world_size == 1:
        out["distributed"] = f"{d.backend}; run with `accelerate launch -m ft train ...` (batch size × processes)"
    else:
        out["distributed"] = d.backend or "none"
    if cfg.data.sample_packing:
        if attention and attention.startswith("flash"):
            path = "flash-attn varlen"
        else:
            path = "per-row eager" if attention == "eager" else "per-row sdpa (eager where a model has no sdpa)"
        out["packing"] = f"rows packed into bins of ≤ {cfg.data.sequence_len} tokens; attention {path}"
    out["evaluation"] = "on held-out data" if cfg.has_eval_data else "none (set val_set_size or test_datasets)"
    return out


def describe(cfg: FtConfig, world_size: int = 1) -> str:
    lines = [resolved_yaml(cfg), "# derived"]
    lines += [f"# {key}: {value}" for key, value in derived(cfg, world_size).items()]
    return "\n".join(lines)
