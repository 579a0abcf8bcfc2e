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
        if a.peft.loftq_config:
            lq = a.peft.loftq_config
            out["method"] += (f", LoftQ start: the targeted base weights quantized to {'nf4' if lq.loftq_bits == 4 else 'int8'}"
                              f" ({lq.loftq_iter} iteration{'s' if lq.loftq_iter > 1 else ''})")
        elif a.peft_init_lora_weights:
            out["method"] += f", {a.peft_init_lora_weights} start"
        if a.relora:
            out["method"] += (f"; ReLoRA: merged and restarted every {t.jagged_restart_steps} steps, the whole model "
                              "written at the end" + ("; ignored: relora_cpu_offload" if a.relora_cpu_offload else ""))
    else:
        out["method"] = "full fine-tuning"
    if d.backend and world_size == 1:
        out["distributed"] = f"{d.backend}; run with `accelerate launch -m ft train ...` (batch size × processes)"
    elif world_size > 1:
        out["distributed"] = f"{d.backend or 'DDP'} on {world_size} processes" + (
            " (num_processes: `ft train` launches them)" if d.num_processes == world_size else "")
    else:
        out["distributed"] = d.backend or "none"
    if d.context_parallel_size and d.context_parallel_size > 1:
        out["distributed"] += (f"; context parallelism: each micro batch of a group of {d.context_parallel_size} "
                               "processes split between them")
    p = cfg.preference
    if p.rl == "ebft":
        e = cfg.online.ebft
        mode = e.mode if e else "structured"
        out["ebft"] = (f"{mode}: samples scored by their features against the rows' answers, from "
                       + ("the model with the adapter off" if a.adapter else "a frozen copy of the model"))
        trl = cfg.online.trl
        if trl is not None and (trl.use_vllm or trl.server_keys()):
            out["ebft"] += ("; sampled in the training process (no vLLM server), so these are ignored: "
                            + ", ".join(["trl.use_vllm"] * trl.use_vllm + [f"trl.{k}" for k in trl.server_keys()]))
        out["batches"] = f"{t.micro_batch_size} row(s) per micro batch, each a prompt and its answer, padded"
    elif p.rl in ("grpo", "gdpo"):
        trl = cfg.online.trl
        how = trl.multi_objective_aggregation or ("normalize_then_sum" if p.rl == "gdpo" else "sum_then_normalize")
        out[p.rl] = (f"{trl.num_generations} samples per prompt rewarded by {', '.join(trl.reward_funcs)} ({how})"
                     + (f", KL × {trl.beta:g} against " + ("the model with the adapter off" if a.adapter else
                                                          "a frozen copy of the model") if trl.beta else ""))
        if trl.use_vllm or trl.server_keys():
            out[p.rl] += ("; sampled in the training process (no vLLM server), so these are ignored: "
                          + ", ".join(["trl.use_vllm"] * trl.use_vllm + [f"trl.{k}" for k in trl.server_keys()]))
        out["batches"] = f"{t.micro_batch_size} prompt(s) per micro batch, padded"
    elif p.rl:
        against = ("the model with the adapter off" if a.adapter and not a.lora_model_dir else
                   "the adapter of lora_model_dir, frozen" if a.adapter else "a frozen copy of the model")
        out["preference"] = f"{p.rl}, β {p.rl_beta:g}, " + (f"reference: {against}" if p.reference else "no reference model")
        out["batches"] = (f"pairs: {t.micro_batch_size} pair(s) per micro batch, their answers end to end without padding; "
                          f"attention per row")
    elif p.reward_model:
        out["reward model"] = f"Bradley-Terry: a one-number head on each text's last token, {p.reward_loss}"
        out["batches"] = f"pairs: {t.micro_batch_size} pair(s) per micro batch, as padded rows"
    else:
        out["batches"] = batches(cfg, attention)
    if cfg.distills:
        out["distillation"] = cfg.distillation.describe()
    diffusion = cfg.diffusion.diffusion
    if diffusion is not None:
        out["diffusion"] = (f"masked diffusion (LLaDA), p from {diffusion.eps:g} to 1, "
                            + ("loss weighted by 1/p" if diffusion.importance_weighting else "unweighted loss")
                            + ("; ignored: generate_samples (ft prints no samples)" if diffusion.generate_samples else ""))
    if q.fp8:
        out["fp8"] = "float8 matmuls in every linear layer but the first and last (torchao)" + (
            "; ignored: fp8_enable_fsdp_float8_all_gather (weights gathered in the training dtype)"
            if q.fp8_enable_fsdp_float8_all_gather else "")
    if t.llmcompressor:
        from ft.config.sparsity import describe

        out["sparsity"] = describe(t.llmcompressor)
    if q.use_onebitllms:
        out["bitnet"] = "BitNet b1.58: ternary weights and 8-bit inputs in every linear layer but the head"
    if cfg.preference.process_reward_model:
        out["process reward model"] = (f"{cfg.preference.step_classes} classes on each step's last token "
                                       "(token classification)")
    out["evaluation"] = "on held-out data" if cfg.has_eval_data else "none (set val_set_size or test_datasets)"
    return out


def batches(cfg: FtConfig, attention: str | None) -> str:
    """How rows become batches, and the attention flattened batches run through (ft.data.packing.batch_layout
    decides it at train time; this says it without torch, so both GPU and CPU cases are named)."""
    d, t = cfg.data, cfg.training
    if attention and attention.startswith("flash"):
        kernel = "flash-attn varlen"
    elif attention == "eager":
        kernel = "per-row eager"
    else:
        kernel = "torch varlen flash attention on a GPU, per-row sdpa on CPU (per-row eager where a model has no sdpa)"
    padded = f"padded to {'sequence_len' if d.pad_to_sequence_len else 'the longest row'}"
    if d.sample_packing:
        return f"packed: {t.micro_batch_size} bin(s) of ≤ {d.sequence_len} tokens per micro batch; attention {kernel}"
    if d.padding_free or (d.padding_free is None and not d.pad_to_sequence_len and not t.group_by_length):
        where = "" if d.padding_free else " on a GPU, " + padded + " on CPU"
        return f"padding-free{where}: {t.micro_batch_size} row(s) end to end per micro batch; attention {kernel}"
    return f"{padded}, {t.micro_batch_size} row(s) per micro batch"


def describe(cfg: FtConfig, world_size: int = 1) -> str:
    lines = [resolved_yaml(cfg), "# derived"]
    lines += [f"# {key}: {value}" for key, value in derived(cfg, world_size).items()]
    return "\n".join(lines)
