"""A preference run's reference log-probabilities, computed once (`precompute_ref_log_probs`) and kept beside
the prepared data.

The file's name holds a key of everything the values depend on: the prepared data (its own key: data files,
tokenizer, sequence_len, seed), the model section (base model, precision, attention), the quantization, the
continued adapter's files, and the base model's files (config and tokenizer files by content; weight files by
name, size, modification time and the content of their first and last MiB, which hold a safetensors file's
header of names, shapes and offsets). Values made for another model, adapter or data are never found.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from ft.config import FtConfig
from ft.files import file_digest

EDGE = 1 << 20


def _edges_digest(path: Path) -> str:
    stat = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(EDGE))
        if stat.st_size > 2 * EDGE:
            f.seek(stat.st_size - EDGE)
            h.update(f.read(EDGE))
    return f"{stat.st_size}:{stat.st_mtime_ns}:{h.hexdigest()}"


def folder_fingerprint(source: Optional[str], revision: Optional[str] = None) -> dict[str, str]:
    """What identifies a model or adapter folder (or the hub snapshot of an id in the local cache)."""
    if not source:
        return {}
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json", revision=revision)
            folder = Path(cached).parent if isinstance(cached, str) else folder
        except ImportError:
            pass
    if not folder.is_dir():
        return {"source": f"{source}@{revision}"}
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            big = path.suffix in (".safetensors", ".bin", ".pt", ".gguf")
            out[path.name] = _edges_digest(path) if big else file_digest(path)
    return out


def reference_key(cfg: FtConfig, data_key: str) -> str:
    inputs = {
        "data": data_key,
        "model": cfg.model.model_dump(mode="json"),
        "quantization": cfg.quantization.model_dump(mode="json"),
        "base_files": folder_fingerprint(cfg.model.base_model, cfg.model.revision_of_model),
        "adapter_files": folder_fingerprint(cfg.adapter.lora_model_dir),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


class ReferenceStore:
    """The cached values of one run: per split, an array of (summed log-probability, answer tokens) per row."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key

    def path(self, split: str) -> Path:
        return self.folder / f"reference-{self.key}-{split}.npy"

    def load(self, split: str) -> Any:
        import numpy as np

        path = self.path(split)
        return np.load(path) if path.is_file() else None

    def save(self, split: str, values: Any) -> None:
        import numpy as np

        path = self.path(split)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, values)
        os.replace(tmp, path)
