"""Finding the checkpoint to resume from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ft.errors import ConfigError

WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_complete(folder: Path) -> bool:
    """A checkpoint the Trainer finished writing: its state, its weights and its optimizer state."""
    has_weights = any((folder / name).exists() for name in WEIGHTS)
    has_optimizer = (folder / "optimizer.pt").exists() or any(folder.glob("global_step*"))  # DeepSpeed's layout
    return (folder / "trainer_state.json").is_file() and has_weights and has_optimizer


def newest_checkpoint(output_dir: str) -> Optional[Path]:
    """The complete checkpoint-N folder with the largest N, skipping ones cut off mid-write."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if is_complete(folder):
            return folder
    return None


def resume_point(resume_from: Optional[str], auto: bool, output_dir: str) -> Optional[Path]:
    if resume_from:
        path = Path(resume_from)
        if not is_complete(path):
            raise ConfigError(f"`resume_from_checkpoint`: {path} is not a complete checkpoint folder")
        return path
    return newest_checkpoint(output_dir) if auto else None
