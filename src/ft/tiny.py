"""Tiny random-weight models and a locally trained tokenizer, for tests and the quickstart.

Nothing here touches the hub: the tokenizer is a byte-level BPE trained on a built-in corpus, and the
models are built from a config with random weights (a few hundred thousand parameters), deterministic
for a seed. `scripts/make_tiny_model.py` is the command-line face of this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ft.data.formats.alpaca import NO_INPUT, WITH_INPUT
from ft.tokenizer.chat_templates import CHAT_TEMPLATES

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "phi3")
MIXTURES = ("qwen3_moe",)  # mixture-of-experts models, with the routed experts' weights as 3-D parameters
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")

_WORDS = (
    "the a an of to and in is was for on that with as by at from it this be are or his her their they we you "
    "one two three four five six seven eight nine ten zero first second answer question context story model "
    "read write response request task input output instruction below describes paired provides further "
    "appropriately completes system user assistant what who where when why how which number word letter "
    "reverse sort count add sum list upper lower capital city country river mountain king queen cat dog "
    "red green blue small large good bad new old day night year time people world water fire earth air "
    "said made went came took gave found thought told called asked tried used worked seemed felt became left"
).split()


def corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic training text: prompt templates, chat markup, words, digits and punctuation."""
    import random

    rng = random.Random(seed)
    text = [WITH_INPUT, NO_INPUT, "### Instruction:\n", "### Response:\n", "### Input:\n"]
    text += ["<|user|>\n", "<|assistant|>", "<|system|>\n", "<|end|>\n"]
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        words += [str(rng.randint(0, 999))] if rng.random() < 0.4 else []
        rng.shuffle(words)
        line = " ".join(words)
        text.append(line.capitalize() + rng.choice([".", "?", "!", ":", ",", ";"]) + rng.choice(["\n", " ", "\n\n"]))
    text.append("".join(chr(c) for c in range(32, 127)))
    return text


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> Any:
    """A fast tokenizer (byte-level BPE) with bos/eos/pad/unk, BOS added like Llama's, and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL.values()) + list(CHAT_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL, additional_special_tokens=list(CHAT_TOKENS))
    fast.chat_template = CHAT_TEMPLATES.get("chatml")
    return fast


def model_config(arch: str, tokenizer: Any, **overrides: Any) -> Any:
    """A tiny config of one of ARCHITECTURES, sized to the tokenizer."""
    import transformers

    if arch not in ARCHITECTURES + MIXTURES:
        raise ValueError(f"unknown architecture `{arch}`; valid: {', '.join(ARCHITECTURES + MIXTURES)}")
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    extra: dict[str, dict[str, Any]] = {
        "llama": {},
        "qwen2": {},
        "mistral": {"sliding_window": None},
        "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 256},
        "phi3": {"original_max_position_embeddings": 4096},
        "qwen3_moe": {"head_dim": 16, "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2},
    }
    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
        "gemma2": transformers.Gemma2Config,
        "phi3": transformers.Phi3Config,
        "qwen3_moe": transformers.Qwen3MoeConfig,
    }[arch]
    return cls(**{**common, **extra[arch], **overrides})


def build_model(arch: str, tokenizer: Any, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight causal LM; the same seed gives the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(arch, tokenizer, **overrides), dtype=torch.float32)


def make_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0, weights_seed: Optional[int] = None,
                    **overrides: Any) -> Path:
    """Build and save a tiny model and its tokenizer to `out_dir` (loadable with from_pretrained). `weights_seed`:
    other weights with the same tokenizer (a distillation teacher for the model of `seed`)."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(seed=seed)
    model = build_model(arch, tokenizer, seed=seed if weights_seed is None else weights_seed, **overrides)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
