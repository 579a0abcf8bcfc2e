"""Load the tokenizer the config names and apply its special tokens, added tokens and chat template."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ft.config.model import ModelConfig
from ft.files import file_digest
from ft.tokenizer.chat_templates import CHAT_TEMPLATES
from ft.errors import ConfigError

log = logging.getLogger("ft")

# The files whose content changes what a tokenizer makes of a text (the prepared-data cache key hashes them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_ANY = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def missing_model_files(folder: Path, weights: bool = True) -> list[str]:
    """What a local model folder lacks of config.json, weights and tokenizer files (a download that stopped
    half-way leaves such a folder)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if weights and not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("model weights (*.safetensors or *.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_ANY):
        missing.append("tokenizer files (tokenizer.json or tokenizer.model)")
    return missing


def check_model_folder(source: str, weights: bool = True) -> None:
    """A local folder given as a model or tokenizer must hold one: one message naming all it lacks."""
    folder = Path(source)
    if not folder.is_dir():
        return
    empty = not any(folder.iterdir())
    missing = missing_model_files(folder, weights or empty)
    if missing:
        what = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        state = f"is empty (a model folder holds {what})" if empty else f"lacks {what}"
        raise ConfigError(f"the model folder `{source}` {state}: a download that did not finish? Download the "
                          "model again, or point base_model at a complete folder")


def tokenizer_source(m: ModelConfig) -> str:
    return m.tokenizer_config or m.base_model


def load_tokenizer(m: ModelConfig) -> Any:
    """The fast tokenizer, with `special_tokens`, `tokens` and `chat_template` applied, and a pad token.

    Returns the tokenizer; `added_tokens(m, tok)` tells whether the vocabulary grew (embeddings must be
    resized and trained then).
    """
    source = tokenizer_source(m)
    check_model_folder(source, weights=False)
    try:
        if _generic_fast_class(m):
            # AutoTokenizer would load this very class, after importing the auto machinery and the model's
            # config (~3 s on a small CPU); going straight to it makes `ft preprocess` start much sooner.
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(source, revision=m.revision_of_model)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(
                source, trust_remote_code=m.trust_remote_code, use_fast=m.tokenizer_use_fast, revision=m.revision_of_model
            )
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer from `{source}`: {str(exc).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"`{source}` has no fast tokenizer; ft needs one (offsets are used to build the labels)")
    specials = {k: v for k, v in m.special_tokens.model_dump().items() if v is not None}
    if specials:
        tok.add_special_tokens(specials)
    if m.tokens:
        tok.add_tokens(list(m.tokens))
    if tok.pad_token is None:
        # Padding is masked out of the loss, but a pad equal to EOS would also mask the real EOS where a
        # collator masks by token id; a separate token keeps EOS learnable (seed 002's tokenizer trouble).
        if tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            tok.pad_token = tok.eos_token
            log.warning("the tokenizer has no pad token; using EOS (%s). Set special_tokens.pad_token to avoid it", tok.eos_token)
    elif tok.pad_token == tok.eos_token:
        log.warning("pad_token equals eos_token (%s); ft masks padding by position, so EOS is still trained", tok.eos_token)
    if m.chat_template_jinja:
        tok.chat_template = m.chat_template_jinja
    elif m.chat_template and CHAT_TEMPLATES.get(m.chat_template) is not None:
        tok.chat_template = CHAT_TEMPLATES.get(m.chat_template)
    if m.chat_template_kwargs and isinstance(tok.chat_template, str):
        tok.chat_template = with_variables(tok.chat_template, m.chat_template_kwargs)
    elif m.chat_template_kwargs:
        raise ConfigError("`chat_template_kwargs` is set, and the tokenizer has no chat template to give them to; set "
                        "`chat_template:`")
    return tok


def with_variables(template: str, variables: dict[str, Any]) -> str:
    """The Jinja template with `variables` set at its top, where they win over what a caller passes (Jinja's
    top-level `set`): enable_thinking: false renders the same wherever the template is used."""
    import json

    def literal(value: Any) -> str:  # JSON is Jinja's literal syntax, but for its null
        return "none" if value is None else json.dumps(value)

    head = "".join("{%- set " + name + " = " + literal(value) + " -%}" for name, value in variables.items())
    return head + template


GENERIC_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _generic_fast_class(m: ModelConfig) -> bool:
    """Whether tokenizer_config.json names the generic fast tokenizer class (Llama 3 and others do)."""
    import json
    from pathlib import Path

    if m.trust_remote_code or not m.tokenizer_use_fast:
        return False
    folder = Path(tokenizer_source(m))
    config = folder / "tokenizer_config.json"
    if not (folder / "tokenizer.json").is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in GENERIC_FAST
    except (OSError, ValueError):
        return False


def adds_bos(tok: Any) -> bool:
    """Whether the tokenizer puts BOS in front of a text by itself (Llama, Gemma do; Qwen does not)."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a")["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id


def tokenizer_fingerprint(m: ModelConfig) -> dict[str, Any]:
    """What identifies the tokenizer `load_tokenizer(m)` returns, without loading it (or torch)."""
    from pathlib import Path

    source = tokenizer_source(m)
    files: dict[str, str] = {}
    folder = Path(source)
    if folder.is_dir():
        files = {name: file_digest(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    else:  # a hub id: hash the files already in the local hub cache, when they are there
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in TOKENIZER_FILES:
                cached = try_to_load_from_cache(source, name, revision=m.revision_of_model)
                if isinstance(cached, str):
                    files[name] = file_digest(Path(cached))
        except ImportError:
            pass
    return {
        "source": source,
        "revision": m.revision_of_model,
        "use_fast": m.tokenizer_use_fast,
        "special_tokens": m.special_tokens.model_dump(),
        "tokens": list(m.tokens),
        "chat_template": m.chat_template,
        "chat_template_jinja": m.chat_template_jinja,
        "chat_template_kwargs": m.chat_template_kwargs,
        "files": files,
    }
