"""The teacher of a distillation run (`teacher_model:`): its tokenizer checked against the model's before any
model loads, then loaded frozen, in eval mode, quantized when asked, on this process's device. Never saved."""

from __future__ import annotations

import logging
from typing import Any

from ft.config.distillation import DistillationConfig
from ft.config.model import ModelConfig, QuantizationConfig
from ft.errors import ConfigError

log = logging.getLogger("ft")


def check_teacher_vocabulary(k: DistillationConfig, tokenizer: Any, trust_remote_code: bool = False) -> int:
    """The vocabulary both models share (its size), read from the tokenizers' files alone: the teacher's tokens with
    the same ids in the model's tokenizer, which may have more after them (tokens the config adds, a pad token ft
    adds); anything else is refused in one sentence naming both vocabularies. Head rows beyond the vocabulary
    (padding to a multiple, which differs between sizes of one family) are not compared."""
    from transformers import AutoTokenizer

    from ft.tokenizer.load import check_model_folder

    check_model_folder(k.teacher_model)
    try:
        teacher = AutoTokenizer.from_pretrained(k.teacher_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"`teacher_model`: cannot load the tokenizer of `{k.teacher_model}`: {str(exc).splitlines()[0]}") from None
    ours, theirs = tokenizer.get_vocab(), teacher.get_vocab()
    differ = sorted((set(theirs.items()) - set(ours.items())) | {(t, i) for t, i in ours.items() if i < len(theirs)
                                                                 and theirs.get(t) != i}, key=lambda kv: kv[1])
    if differ or len(theirs) != max(theirs.values(), default=-1) + 1:
        token = differ[0][0] if differ else "?"
        raise ConfigError(f"`teacher_model`: the teacher's tokenizer ({len(theirs):,} tokens) and the model's "
                          f"({len(ours):,} tokens) differ (first at `{token}`); distillation compares the two "
                          "distributions token by token and needs one tokenizer for both")
    return len(ours)


def shared_vocabulary(k: DistillationConfig, tokenizer: Any, trust_remote_code: bool = False) -> int:
    """The vocabulary the distillation compares over: the teacher's tokenizer checked against the model's
    (check_teacher_vocabulary), or the model's own when the rows carry the teacher's log-probabilities; kd_top_k
    must fit in it."""
    vocab = check_teacher_vocabulary(k, tokenizer, trust_remote_code) if k.teacher_model else len(tokenizer)
    if k.kd_top_k is not None and k.kd_top_k > vocab:
        raise ConfigError(f"`kd_top_k`: {k.kd_top_k} is more tokens than the vocabulary has ({vocab:,}); lower it")
    return vocab


def load_teacher(k: DistillationConfig, m: ModelConfig, train_dtype: Any, vocab: int) -> Any:
    """The teacher, frozen and in eval mode, with a head of at least `vocab` rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from ft.model.precision import device
    from ft.model.quantize import bnb_config

    dtype = getattr(torch, k.teacher_dtype) if k.teacher_dtype else train_dtype
    q = QuantizationConfig(load_in_4bit=k.teacher_load_in_4bit, load_in_8bit=k.teacher_load_in_8bit)
    kwargs: dict[str, Any] = {"trust_remote_code": m.trust_remote_code, "dtype": dtype}
    attention = k.teacher_attn_implementation or m.attention_request
    if attention:
        kwargs["attn_implementation"] = attention
    quant = bnb_config(q, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device()}
    try:
        teacher = AutoModelForCausalLM.from_pretrained(k.teacher_model, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load the teacher `{k.teacher_model}`: {str(exc).splitlines()[0]}") from None
    if quant is None:
        teacher.to(device())
    rows = teacher.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise ConfigError(f"`teacher_model`: its head has {rows:,} rows, fewer than the tokenizer's {vocab:,} tokens")
    teacher.config.use_cache = False
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if q.bits == 4 and not torch.cuda.is_available():
        from ft.model.quantize import guard_cpu_4bit

        guard_cpu_4bit(teacher)
    size = sum(p.numel() for p in teacher.parameters())
    log.info("teacher: %s, %s parameters, %s, frozen", k.teacher_model, f"{size:,}",
             f"{q.bits}-bit" if q.bits else str(dtype).removeprefix("torch."))
    return teacher
