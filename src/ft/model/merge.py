"""`ft merge-lora`: fold the adapter into a 16-bit (or fp32 on CPU) copy of the base model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ft.config import FtConfig
from ft.errors import ConfigError

log = logging.getLogger("ft")


def merge_lora(cfg: FtConfig, lora_model_dir: Optional[str] = None, output_dir: Optional[str] = None) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft.model.precision import resolve_dtype
    from ft.model.tokenizer import load_tokenizer

    adapter = Path(lora_model_dir or cfg.adapter.lora_model_dir or cfg.training.output_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"no adapter in {adapter} (adapter_config.json is missing); train first or pass --lora-model-dir")
    out = Path(output_dir or Path(cfg.training.output_dir) / "merged")
    if (adapter / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)  # the one saved with the adapter (added tokens)
    else:
        tokenizer = load_tokenizer(cfg.model)
    base = AutoModelForCausalLM.from_pretrained(
        # the training precision (fp32 on CPU), never quantized: the adapter merges into full weights
        cfg.model.base_model, dtype=resolve_dtype(cfg.model), trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision_of_model,
    )
    if len(tokenizer) != base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, max_shard_size="5GB")
    tokenizer.save_pretrained(out)
    log.info("merged %s into %s → %s", adapter, cfg.model.base_model, out)
    return out
