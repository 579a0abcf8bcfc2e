"""Peak GPU memory of a training step, by formula, from the config and the model's shape.

Every figure follows what ft runs: the storage of a quantized base (nf4 with or without double-quantized
scales, LLM.int8 with its row scales) with embeddings, norms and head left in the compute dtype (ft never
upcasts them); LoRA weights in fp32 (peft), fp32 master weights for trainable full-size weights under
`bf16: true` (pure bf16 under `bf16: full`); gradients in the trainable weights' dtype; optimizer states as
each optimizer keeps them; the activations a decoder layer saves for its backward pass (all layers, or with
checkpointing each layer's input plus one layer recomputed; offloaded inputs on the host; a tiled MLP one tile
at a time); the logits as the loss builds them (a chunk at a time, or whole); the peak as the larger of the
loss's backward and one layer's, with its gradients in flight (flash attention's own workspace among them); and
per-GPU sharding under ZeRO-1/2/3 and FSDP, with CPU offload. The constants below are the parts no formula gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ft.config.adapter import is_regex
from ft.config.training import SLIDING_LAYER_TYPES, grouped_backward_calls
from ft.data.packing import PADDED, batch_layout
from ft.plan.methods import trainable as method_trainable
from ft.plan.shapes import DEFAULT_TARGETS, IA3_DEFAULT_TARGETS, Shape

GiB = 1 << 30
CUDA_CONTEXT = int(0.5 * GiB)  # the CUDA context and kernels: on the card, outside torch's allocator
ALLOCATOR_OVERHEAD = 0.08  # the caching allocator's fragmentation, over what is allocated
COMMUNICATION = int(0.25 * GiB)  # NCCL's buffers, per GPU, with several processes
NF4_SCALES = 1 / 64  # one 8-bit absmax per block of 64 weights (double quantization) ...
NF4_SCALES_PLAIN = 4 / 64  # ... or one fp32 absmax per block without it
CHUNK_BYTES = 1 << 28  # the chunked loss's fp32 logits per chunk (ft.train.loss.CHUNK_BYTES)
NORM_CHUNK_BYTES = 1 << 26  # chunked_rms_norm's fp32 chunk (ft.model.rms_norm.CHUNK_BYTES)
GATHERED = "gathered keys and values (context parallelism)"
IN_FLIGHT = "gradients in flight (one layer's backward)"
OVERLAP = "less: gradients made as activations are freed"
# what the forward keeps and the backward frees layer by layer, as it makes the layers' gradients
FREED_IN_BACKWARD = ("activations", "activations of layers not checkpointed", "16-bit copies of the weights (autocast)",
                     "attention outputs kept (selective)", GATHERED)
STATE_BYTES = {  # optimizer state bytes per trainable parameter, for fp32 weights (AdamW: two moments)
    "adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_32bit": 8, "adamw_bnb_8bit": 2, "paged_adamw_8bit": 2,
    "lion_8bit": 1, "paged_lion_8bit": 1, "adagrad": 4, "rmsprop": 4, "sgd": 0, "adafactor": 0.1,
}


@dataclass
class Plan:
    """Per GPU bytes by part, the host bytes offloading needs, and the inputs that decided them."""

    parts: dict[str, int]
    host: dict[str, int] = field(default_factory=dict)
    gpus: int = 1
    tokens: int = 0  # a GPU's tokens of the micro batch
    micro_batch: int = 0  # the micro batch's tokens (more than a GPU's under context parallelism)
    notes: list[str] = field(default_factory=list)

    @property
    def allocated(self) -> int:
        return sum(self.parts.values())

    @property
    def peak(self) -> int:
        """What the card must hold: allocations, the allocator's overhead, the context, communication."""
        return int(self.allocated * (1 + ALLOCATOR_OVERHEAD)) + CUDA_CONTEXT + (COMMUNICATION if self.gpus > 1 else 0)


def lora_targets(cfg: Any, shape: Shape) -> list[str]:
    a = cfg.adapter
    names = set(shape.linears())
    if a.lora_target_linear:
        return sorted(names)
    defaults = IA3_DEFAULT_TARGETS if a.adapter == "ia3" else DEFAULT_TARGETS  # PEFT's per method
    wanted = a.lora_target_modules or defaults.get(shape.model_type, ())
    if any(map(is_regex, wanted)):  # a regular expression over whole names: tried on a layer's usual paths
        paths = [f"model.{middle}layers.0.{block}." for middle in ("", "language_model.") for block in ("self_attn", "mlp")]
        return sorted(n for n in names if any(re.fullmatch(wanted[0], p + n) for p in paths))
    return sorted(n for n in names if any(n == w or n.endswith(w) for w in wanted))


def estimate(cfg: Any, shape: Shape, gpus: int = 1, longest_batch: Optional[int] = None) -> Plan:
    """The plan for one training step of the largest micro batch: `longest_batch` token slots when the data
    says so, else the worst case (micro_batch_size × sequence_len)."""
    m, q, a, t, d = cfg.model, cfg.quantization, cfg.adapter, cfg.training, cfg.distributed
    compute = 4 if m.precision == "fp32" else 2  # `auto` plans for a GPU: bf16
    pairs = cfg.preference.trains_pairs  # a micro batch of pairs holds two sequences a pair
    tokens = longest_batch or t.micro_batch_size * cfg.data.sequence_len * (2 if pairs else 1)
    sampled = sampled_batch(cfg, longest_batch)
    if sampled is not None:  # trained on its own samples: the forward that trains holds every sample
        tokens = sampled.sequences * sampled.length
    split = d.context_parallel_size or 1
    whole = tokens
    if split > 1 and gpus >= split:  # context parallelism: a GPU holds its slice of its group's micro batch
        tokens = -(-tokens // split)
    plan = Plan({}, gpus=gpus, tokens=tokens, micro_batch=whole)
    if sampled is not None:
        plan.notes.append(sampled.said)
    gathered = gathered_grads = 0  # context parallelism's keys and values beyond the slice's own, per layer
    if split > 1 and gpus >= split:
        plan.notes.append(f"context_parallel_size {split}: each GPU holds 1/{split} of each micro batch's tokens, and in "
                          "each attention layer the keys and values its documents reach, gathered from the group (the "
                          "whole sequence's on the GPU holding its end, as planned here)")
        gathered, gathered_grads = _gathered(shape, tokens, split, compute, _calls(cfg, shape))
    elif split > 1:
        plan.notes.append(f"context_parallel_size {split} needs a multiple of {split} GPUs (--num-gpus {split}); planned "
                          "without it: a GPU holds whole micro batches")
    embed, head = shape.embedding_params(), shape.head_params()

    # weights
    base = weight_bytes_of(shape, q.bits, compute, q.bnb_4bit_use_double_quant)

    # what trains, in which dtype
    masters = _masters(m)
    if a.adapter:
        trainable = method_trainable(cfg, shape, lora_targets(cfg, shape))
        to_save = set(a.lora_modules_to_save or ()) | ({"embed_tokens", "lm_head"} if m.tokens else set())
        full_copies = (embed if "embed_tokens" in to_save else 0) + (head or embed if "lm_head" in to_save else 0)
        trainable_bytes = 4 * trainable + (4 if masters else compute) * full_copies
        trainable += full_copies
    else:
        trainable = shape.total_params()
        base = trainable * (4 if masters else compute)  # the weights are the masters
        trainable_bytes = 0
    weight_bytes = 4 if (a.adapter or masters) else compute  # LoRA weights are fp32 (peft)
    grads = trainable * weight_bytes
    states = int(trainable * STATE_BYTES.get(t.optimizer, 8) * (weight_bytes / 4 if STATE_BYTES.get(t.optimizer, 8) >= 4 else 1))
    if t.optimizer == "muon":  # full fine-tuning: a momentum per hidden matrix weight, AdamW's two moments elsewhere
        states = int((4 * shape.linear_params() + 8 * (trainable - shape.linear_params())) * weight_bytes / 4)

    # sharding
    stage = _stage(d, gpus)
    unit = held = 0
    if stage >= 1:
        states //= gpus
    if stage >= 2:
        grads //= gpus
    if stage >= 3:
        held = shape.linear_params() if q.bits == 8 else 0  # LLM.int8 weights: whole on each GPU (FSDP2 ignores them)
        unit = (base - held + trainable_bytes) // max(shape.layers, 1)  # one decoder layer gathered at a time
        base = held + (base - held) // gpus
        trainable_bytes //= gpus
        if held:
            plan.notes.append("load_in_8bit under FSDP: the 8-bit weights are whole on each GPU; the rest is sharded")
    offload = bool(d.fsdp and d.fsdp_config.fsdp_offload_params and gpus > 1)
    if offload:
        plan.host["offloaded parameters, gradients, optimizer states"] = base - held + trainable_bytes + grads + states
        plan.notes.append("fsdp_offload_params: the shards live in CPU memory; each GPU holds the unit in flight")
        base = held
        trainable_bytes = grads = states = 0
        unit *= 2  # the unit in flight and the next one, prefetched
    plan.parts["base weights"] = base
    plan.parts["trainable weights (fp32)" if a.adapter else "master weights"] = trainable_bytes
    if pairs and cfg.preference.reference and not a.adapter and not cfg.preference.precompute_ref_log_probs:
        plan.parts["frozen reference copy"] = shape.total_params() * (4 if masters else compute)
    plan.parts["gradients"] = grads
    plan.parts[f"optimizer states ({t.optimizer})"] = states
    if unit:
        plan.parts["gathered layer (FSDP / ZeRO-3)"] = unit

    if not a.adapter and masters and compute == 2 and stage < 3:  # autocast's 16-bit copies, kept for the backward
        plan.parts["16-bit copies of the weights (autocast)"] = (shape.linear_params() + (head or embed)) * 2
    # activations and logits
    layer_in = tokens * shape.hidden * compute
    saved, tile = _layer_activations(cfg, shape, tokens, compute)
    if t.gradient_checkpointing:  # the first `recomputed` layers keep only their input, the others everything
        chosen = t.gradient_checkpointing_layers  # `auto` counted as every layer: what it falls back to at most
        recomputed = shape.layers if chosen in (None, "auto") else min(shape.layers, chosen)
        inputs = layer_in * (recomputed + 1)  # each checkpointed layer's input, and the final norm's
        if t.activation_offloading:  # every layer checkpointed (config/schema.py)
            plan.host["offloaded layer inputs (pinned)"] = inputs
            inputs = 2 * layer_in  # the copy in flight and the one coming back
        plan.parts["checkpointed layer inputs"] = inputs
        kept = tokens * kept_attention(cfg, shape, compute)  # selective_checkpointing: per layer that keeps its attention
        keeping = sum(keeps_attention(cfg, shape, i) for i in range(recomputed)) if kept else 0
        if keeping:
            plan.parts["attention outputs kept (selective)"] = kept * keeping
        # the last layer recomputed (the first through its backward) reuses its kept attention output, counted above
        reused = kept if keeping and keeps_attention(cfg, shape, recomputed - 1) else 0
        recomputing = saved - reused + gathered if recomputed else 0
        held = shape.layers - recomputed  # the last layers, not checkpointed: theirs is the first backward to run
        if not held:  # the peak is the larger of two phases: one layer's backward and the loss's, which ends before it
            plan.parts["one layer recomputed"] = saved + tile - reused
            if gathered:
                plan.parts[GATHERED] = gathered
            backward = layer_backward(cfg, shape, tokens, compute, recomputing, tile, gathered_grads)
            plan.parts[IN_FLIGHT] = backward - recomputing - tile
        else:  # three phases: the loss's and the first layers' backward, with every activation of those not
            # checkpointed; then a recomputed layer's backward, theirs freed
            plan.parts["activations of layers not checkpointed"] = saved * held
            if gathered:
                plan.parts[GATHERED] = gathered * held
            backward = _first_backward(cfg, shape, tokens, compute, tile, gathered_grads, plan)
            if recomputed:
                later = layer_backward(cfg, shape, tokens, compute, recomputing, tile, gathered_grads)
                held_bytes = (saved + gathered) * held  # the first phase's: freed before a recomputed layer's backward
                plan.parts["one layer recomputed, beyond the layers not checkpointed"] = max(0, later - held_bytes - backward)
                backward = max(backward, later - held_bytes)
    else:  # and with full fine-tuning the final norm's: its input's fp32 copy, normalized input and output
        final = 0 if a.adapter else tokens * shape.hidden * (4 + 2 * (4 if compute == 4 or masters else compute))
        plan.parts["activations"] = saved * shape.layers + final
        if gathered:
            plan.parts[GATHERED] = gathered * shape.layers
        backward = _first_backward(cfg, shape, tokens, compute, tile, gathered_grads, plan)
    k = cfg.distillation
    teacher = shape.teacher if k.on and not k.kd_cache else None
    if teacher is not None:  # frozen, beside the model: its weights, and one layer's forward at a time (no grad)
        t_compute = {"float32": 4}.get(k.teacher_dtype or "", compute)
        t_bits = 4 if k.teacher_load_in_4bit else 8 if k.teacher_load_in_8bit else None
        plan.parts["teacher weights (frozen)"] = weight_bytes_of(teacher, t_bits, t_compute, True)
        plan.parts["teacher forward (no grad)"] = tokens * t_compute * (3 * teacher.hidden + 2 * teacher.intermediate)
    if sampled is not None:
        plan.parts["attention masks of the samples"] = sampled.mask
    diffusion = cfg.diffusion.diffusion is not None
    if diffusion:  # full attention within each row, as a boolean mask over the batch's rows (train/diffusion.py):
        # (row × row) per padded row, or (tokens × tokens) over a micro batch laid out as one flattened row
        flat = batch_layout(cfg.data, t.group_by_length, on_gpu=True) != PADDED
        plan.parts["attention masks (diffusion)"] = tokens * (tokens if flat else tokens // t.micro_batch_size)
    chunked = (t.chunked_cross_entropy or cfg.distills or sampled is not None or diffusion) and not (stage >= 3)
    chunk = max(64, CHUNK_BYTES // (4 * shape.vocab))
    # the plain loss keeps the fp32 log-softmax for the backward pass; at its peak the logits in the compute
    # dtype and their fp32 upcast (none in fp32) exist beside it. The chunked loss: one chunk at a time, in its
    # backward the chunk's fp32 logits, log-softmax and gradient.
    loss = (min(tokens, chunk) * shape.vocab * 4 * (5 if cfg.distills else 3) if chunked
            else tokens * shape.vocab * (4 + ((compute + 4) if compute == 2 else 4)
                                         + (compute if shape.logit_softcap else 0)))  # tanh's output
    if cfg.preference.reward_model:  # one number per text, no vocabulary's logits
        loss = 0
    plan.parts["logits and loss, beyond a layer's backward"] = max(0, loss - backward)
    # the backward pass makes each layer's gradients as it frees the layer's activations: not all alive at once (with
    # several GPUs they live in buffers made before the first step: DDP's buckets, DeepSpeed's and FSDP's own)
    layer_grads = 0 if gpus > 1 else (trainable - full_copies) * weight_bytes if a.adapter else \
        (shape.linear_params() + shape.other_params()) * weight_bytes
    freed = sum(plan.parts.get(name, 0) for name in FREED_IN_BACKWARD)
    if t.gradient_checkpointing and not t.activation_offloading:
        freed += plan.parts["checkpointed layer inputs"]
    overlap = min(freed, layer_grads)
    if overlap:  # counted above in full, and in the activations
        plan.parts[OVERLAP] = -overlap
    return plan


def _first_backward(cfg: Any, shape: Shape, tokens: int, compute: int, tile: int, gathered: int, plan: Plan) -> int:
    """The backward of a layer whose activations are counted with every layer's (no checkpointing, or a layer not
    checkpointed): its MLP tile and its gradients in flight, as parts of `plan`; what it holds beyond its activations."""
    backward = layer_backward(cfg, shape, tokens, compute, 0, tile, gathered)
    if tile:
        plan.parts["one MLP tile recomputed"] = tile
    plan.parts[IN_FLIGHT] = backward - tile
    return backward


def layer_backward(cfg: Any, shape: Shape, tokens: int, compute: int, saved: int, tile: int, gathered: int = 0) -> int:
    """What one decoder layer's backward holds at its peak (its recomputed activations `saved`, or 0 when they are
    counted with every layer's; the MLP `tile`): at the MLP, the activations and the tile with the incoming
    gradient and the product's; at the attention, once the MLP's are freed, the incoming gradient, the norm's
    fp32 one, those of the attention's output, q, k and v, and what a GPU's flash attention allocates inside
    itself (flash_workspace), with context parallelism's `gathered` gradients beyond the slice's own (_gathered).
    Its loss's backward has ended by then."""
    t = cfg.training
    h, qd, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    resid = 4 if compute == 4 or (compute == 2 and not cfg.adapter.adapter and _masters(cfg.model)) else compute
    mlp_tokens = min(tokens, t.tiled_mlp_tokens) if t.tiled_mlp else tokens
    mlp_saved = 0 if t.tiled_mlp else min(saved, tokens * 4 * i * compute)
    at_mlp = saved + tile + tokens * h * resid + mlp_tokens * 2 * i * compute
    norm_grad = h * resid if _lean_norms(cfg) else h * 4  # the model's norm computes its gradient in fp32
    # ft's chunked norm: three chunk-sized fp32 tensors in its backward (ft.model.rms_norm)
    norm_work = 3 * min(tokens * h * 4, NORM_CHUNK_BYTES) if t.chunked_rms_norm else 0
    at_attention = (saved - mlp_saved + norm_work + tokens * (h * resid + norm_grad + (2 * qd + 2 * kv) * compute
                                                              + flash_workspace(shape, compute, cfg)
                                                              + grouped_pieces(shape, compute, cfg)) + gathered)
    return max(at_mlp, at_attention)


def _calls(cfg: Any, shape: Shape) -> int:
    """The kernel calls an attention layer's backward makes: one, or with grouped_attention_backward one per group
    of key/value heads (ft.model.attention_backward)."""
    t = cfg.training
    if not t.grouped_attention_backward or _eager_scores(cfg, shape) or batch_layout(cfg.data, t.group_by_length, on_gpu=True) == PADDED:
        return 1  # padded batches go through sdpa, whose backward runs whole
    return grouped_backward_calls(shape.kv_heads)


def grouped_pieces(shape: Shape, compute: int, cfg: Any) -> int:
    """Per token, what grouped_attention_backward holds beside the kernel for one group of heads: the group's copies
    of q, k, v and of the incoming gradient, its recomputed output and fp32 log-sum-exp, and its gradients of q, k
    and v before they are written into the layer's."""
    n = _calls(cfg, shape)
    if n == 1:
        return 0
    qd, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return (4 * qd + 4 * kv) * compute // n + shape.heads * 4 // n


def _gathered(shape: Shape, tokens: int, split: int, compute: int, calls: int) -> tuple[int, int]:
    """Context parallelism (ft.train.context_parallel), on the GPU whose slice of `tokens` ends the sequence: its
    attention layers reach every key and value of the group's `split` slices. (Bytes each attention layer keeps for
    its backward beyond its slice's own keys and values; bytes its backward holds beyond the slice's own key and
    value gradients: theirs over the whole sequence, with grouped keys the flash kernel's per-query-head copies of
    them (flash_workspace), and the whole sequence's buffer that sums each one back; over `calls` groups of heads
    (grouped_attention_backward), a group's copies and their keys' and values' copies and gradients.)"""
    per_token = shape.kv_heads * shape.head_dim * compute
    beyond = 2 * (split - 1) * tokens * per_token
    per_head_copies = 2 * shape.heads * shape.head_dim * compute // calls if shape.kv_heads < shape.heads else 0
    pieces = 4 * per_token // calls if calls > 1 else 0
    return beyond, beyond + (split - 1) * tokens * (per_head_copies + pieces) + split * tokens * per_token


def flash_workspace(shape: Shape, compute: int, cfg: Any) -> int:
    """Per token, what a GPU's flash attention backward allocates inside itself, which this CPU's kernels do not
    show: dq accumulated in fp32, and with grouped keys dk and dv per query head before they are summed; a group's
    share of them with grouped_attention_backward."""
    if _eager_scores(cfg, shape):
        return 0
    qd = shape.heads * shape.head_dim
    return (qd * 4 + (2 * qd * compute if shape.kv_heads < shape.heads else 0)) // _calls(cfg, shape)


@dataclass(frozen=True)
class Sampled:
    sequences: int  # in the micro batch's training forward
    length: int  # tokens each, padded to the longest
    mask: int  # bytes of the boolean attention masks the forward builds (and attention keeps for its backward)
    said: str


def sampled_batch(cfg: Any, longest_batch: Optional[int] = None) -> Optional[Sampled]:
    """What the training forward of a method that trains on the model's own samples holds, at the most: `rl: grpo`,
    `gdpo` and structured `ebft` train on each prompt with its trl.num_generations answers of up to
    max_completion_length tokens, right-padded to the longest (transformers' boolean mask of (length × length) a
    sequence); strided `ebft` on n_samples_per_prompt copies of each text followed by generate_max_len sampled
    tokens per anchor (anchors every `stride` tokens from context_length: a text without a prompt has the most),
    each with its own (length × length) mask (ft.train.ebft.strided_layout). None for the other methods."""
    rl, mbs = cfg.preference.rl, cfg.training.micro_batch_size
    row = longest_batch // mbs if longest_batch else cfg.data.sequence_len  # a prompt's (or text's) tokens
    from ft.config.online import EbftSettings, TrlSettings

    e = cfg.online.ebft or EbftSettings()  # as the trainer takes it
    if rl in ("grpo", "gdpo") or (rl == "ebft" and e.mode == "structured"):
        trl = cfg.online.trl or TrlSettings()
        n, length = mbs * trl.num_generations, row + trl.max_completion_length
        return Sampled(n, length, n * length * length, f"`rl: {rl}`: a micro batch of {mbs} prompt(s) trains on "
                       f"{n} samples of up to {length:,} tokens (prompt and answer)")
    if rl == "ebft":
        anchors = max(0, (row - e.generate_max_len - e.context_length) // e.stride + 1)
        n, length = mbs * e.n_samples_per_prompt, row + e.generate_max_len * anchors
        return Sampled(n, length, n * length * length, f"`rl: ebft` (strided): a micro batch of {mbs} text(s) trains on "
                       f"{n} sequences of {length:,} tokens ({anchors} rollouts of {e.generate_max_len} tokens a text)")
    return None


def weight_bytes_of(shape: Shape, bits: Optional[int], compute: int, double_quant: bool) -> int:
    """A model's weights in memory: 4-bit (nf4 and its scales), 8-bit (int8 and a scale per row) or in `compute`
    bytes; embeddings, head and norms stay in the compute dtype."""
    rest = (shape.embedding_params() + shape.head_params() + shape.other_params()) * compute
    if bits == 4:
        return int(shape.linear_params() * (0.5 + (NF4_SCALES if double_quant else NF4_SCALES_PLAIN))) + rest
    if bits == 8:
        return shape.linear_params() + 4 * shape.layers * sum(out for _, out in shape.linears().values()) + rest
    return shape.total_params() * compute


def _stage(d: Any, gpus: int) -> int:
    """What is sharded over the GPUs: 0 nothing (DDP), 1 optimizer states, 2 and gradients, 3 and weights."""
    if gpus <= 1:
        return 0
    if d.fsdp:
        return 2 if "shard_grad_op" in d.fsdp else 3
    if d.deepspeed:
        from ft.launch.deepspeed import zero_stage

        return zero_stage(d.deepspeed)
    return 0


def _layer_activations(cfg: Any, shape: Shape, tokens: int, compute: int) -> tuple[int, int]:
    """(bytes one decoder layer saves for its backward pass, bytes of one MLP tile recomputed in the backward
    pass with tiled_mlp, else 0), as autograd saves them (tests/test_plan.py counts them with saved-tensor hooks).

    The residual stream is in the compute dtype, or fp32 for full fine-tuning of fp32 master weights under
    autocast. Each RMSNorm keeps an fp32 copy of its input and, when its weight trains, its normalized input.
    Attention keeps q, k, v, its output (o_proj's input) and its log-sum-exp (flash/sdpa keep no score matrix);
    the MLP its gate, activation and up (none with tiled_mlp: each tile recomputes them). A linear layer's input
    is kept once for the layers that read it when one of them needs it: its weight trains (under autocast from
    fp32, one 16-bit copy per layer), or LoRA reads it (ft's fused path; PEFT's without a cast). PEFT's path
    otherwise keeps a copy per adapted layer: cast to fp32 and back under autocast, or dropout's output and mask
    (a byte per element on a GPU). LoRA also keeps each layer's rank-r product. Liger's kernels (liger_rms_norm,
    liger_glu_activation; what their autograd functions save, not measured here) keep a norm's input as it is and
    the MLP's gate and up alone; ft's chunked_rms_norm keeps its input as it is too (tests/test_plan.py)."""
    m, a, q, t = cfg.model, cfg.adapter, cfg.quantization, cfg.training
    h, qd, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    linears = shape.linears()
    from_fp32 = compute == 2 and not a.adapter and _masters(m)  # autocast over fp32 weights: an fp32 residual
    resid = 4 if compute == 4 or from_fp32 else compute
    norms = 4 if shape.model_type == "gemma2" else 2
    lean = _lean_norms(cfg)  # Liger's norm and ft's chunked one keep their input as it is, and no normalized copy
    copy = h * resid if lean else 4 * h
    per_token = norms * (copy + (h * resid if not a.adapter and not lean else 0)) + (norms + shape.heads) * 4
    per_token += (2 * qd + 2 * kv) * compute
    if "qkv_proj" in linears:  # Phi-3: v is a view of the fused projection's output, which it keeps whole
        per_token += (qd + kv) * compute
    if _eager_scores(cfg, shape):  # the model's eager attention, per row (ft.model.packed_attention.per_row_eager):
        # keys and values repeated per query head, no log-sum-exp, and each row's (heads × length × length) scores
        # as tanh's output and the probabilities (compute dtype) and softmax's fp32 output (the same tensor in fp32);
        # a row of sequence_len tokens at the most, so at most tokens × sequence_len scores per head
        per_token += 2 * (qd - kv) * compute - shape.heads * 4
        per_token += shape.heads * cfg.data.sequence_len * (8 if compute == 4 else 2 * compute + 4)
    per_mlp_token = (2 if m.liger_glu_activation else 3) * i * compute  # Liger's GLU keeps gate and up, no activation
    needed: set[str] = set()
    if not a.adapter:
        needed = {_reads(n) for n in linears}
        if from_fp32:  # each layer reading an fp32 pre-norm output keeps its own 16-bit copy
            per_token += sum(linears[n][0] for n in linears if _reads(n) in ("q", "mlp")) * 2
            needed -= {"q", "mlp"}
    elif a.adapter in ("lora", "qlora"):
        names = lora_targets(cfg, shape)
        per_token += len(names) * a.lora_r * compute  # x·Aᵀ, which B's gradient reads
        inputs = sum(linears[n][0] for n in names)
        if a.lora_dropout > 0:  # PEFT's path: each layer's dropout output (in its matmul's dtype) and mask
            per_token += inputs * (compute + 1)
        elif not _fused(cfg) and compute == 2 and q.bits is None:  # PEFT casts to fp32 and autocast back, per layer
            per_token += inputs * compute
        else:
            needed = {_reads(n) for n in names}
    per_token += (h * resid if "q" in needed else 0) + (h * resid if "mlp" in needed else 0)
    per_mlp_token += i * compute if "down" in needed else 0  # o_proj's input is attention's output, kept anyway
    if t.tiled_mlp:
        return tokens * per_token, min(tokens, t.tiled_mlp_tokens) * per_mlp_token
    return tokens * (per_token + per_mlp_token), 0


def kept_attention(cfg: Any, shape: Shape, compute: int) -> int:
    """Bytes per token a layer keeps under selective_checkpointing (ft.model.selective): the attention kernel's
    output in the compute dtype and its fp32 log-sum-exp per query head; 0 where attention is the model's own
    (eager: nothing is kept) or the key is off."""
    t = cfg.training
    if not (t.gradient_checkpointing and t.selective_checkpointing) or _eager_scores(cfg, shape):
        return 0
    return shape.heads * shape.head_dim * compute + shape.heads * 4


def keeps_attention(cfg: Any, shape: Shape, layer: int) -> bool:
    """Whether the layer keeps its attention outputs under selective_checkpointing: full-attention layers, and the
    sliding-window ones with selective_checkpointing_sliding_window."""
    types = shape.layer_types
    return (cfg.training.selective_checkpointing_sliding_window or layer >= len(types)
            or types[layer] not in SLIDING_LAYER_TYPES)


def _lean_norms(cfg: Any) -> bool:
    """Whether the norms keep their input as it is (and compute their gradient in its dtype) rather than an fp32
    copy: Liger's kernel, or ft's chunked_rms_norm (ft.model.rms_norm)."""
    return cfg.model.liger_rms_norm or cfg.training.chunked_rms_norm


def _eager_scores(cfg: Any, shape: Shape) -> bool:
    """Whether attention materializes its scores: soft-capped ones (Gemma-2), which only flash-attn computes in a
    kernel (ft runs the model's eager attention otherwise: ft.model.load, ft.model.packed_attention)."""
    return bool(shape.attention_softcap) and cfg.model.attention_request not in ("flash_attention_2", "flash_attention_3")


def _reads(linear: str) -> str:
    """What a decoder layer's linear layer reads: the attention's pre-norm output ("q"), the attention's output
    ("o"), the MLP's pre-norm output ("mlp") or the MLP's gated product ("down")."""
    return {"o_proj": "o", "down_proj": "down"}.get(linear, "q" if linear in ("q_proj", "k_proj", "v_proj", "qkv_proj") else "mlp")


def _masters(m: Any) -> bool:
    """Whether trainable full-size weights are fp32 masters (under autocast) rather than the compute dtype."""
    return (m.precision in ("bf16", "auto", "fp16") and not m.pure_bf16) or m.precision == "fp32"


def _fused(cfg: Any) -> bool:
    """Whether LoRA's layers take ft's in-place update (ft.model.fused_lora) rather than PEFT's path."""
    from ft.launch.deepspeed import zero3

    a = cfg.adapter
    return (a.lora_fused and a.lora_dropout == 0 and not a.peft_use_dora and cfg.quantization.bits != 8
            and not zero3(cfg.distributed.deepspeed))

