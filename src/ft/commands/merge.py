"""`ft merge-lora`: the trained adapter folded into its base model, written as a plain model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ft.config import FtConfig

log = logging.getLogger("ft")


def run_merge(cfg: FtConfig, merged_dir: Optional[str]) -> Path:
    """Merge the adapter in lora_model_dir (else output_dir) into merged_dir (else output_dir/merged)."""
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    if cfg.adapter.relora and not cfg.adapter.lora_model_dir:
        from ft.errors import ConfigError

        raise ConfigError(f"this run trains with ReLoRA, which merges LoRA itself and writes the whole model to "
                          f"{cfg.training.output_dir}: nothing to merge (it loads as any model)")
    from ft.model.merge import merge_lora

    out_dir = Path(cfg.training.output_dir)
    adapter = Path(cfg.adapter.lora_model_dir or out_dir)
    return merge_lora(cfg.model, adapter, Path(merged_dir) if merged_dir else out_dir / "merged")
