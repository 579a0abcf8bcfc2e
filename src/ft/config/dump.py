"""The config written back as YAML: what `ft validate` prints and what a run saves as ft_config.yml."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from ft.config.data import FORMAT_KEYS
from ft.config.load import SECTION_KEYS
from ft.config.schema import FtConfig


def to_flat_dict(cfg: FtConfig) -> dict[str, Any]:
    """The config as one flat YAML-ready mapping of ft names (what `load_config` reads back)."""
    flat: dict[str, Any] = {}
    for name in SECTION_KEYS:
        section: BaseModel = getattr(cfg, name)
        if name == "distillation" and not cfg.distills:
            flat["teacher_model"] = None  # its other keys, read back without a teacher, would be refused
            continue
        flat.update(section.model_dump(mode="json"))
    for key in ("datasets", "test_datasets"):
        # a format-specific key is written only where the user wrote it: read back, a key the entry's format
        # does not read is refused even at its default value
        flat[key] = [{k: v for k, v in dumped.items() if k not in FORMAT_KEYS or k in entry.model_fields_set}
                     for dumped, entry in zip(flat[key], getattr(cfg.data, key))]
    return flat


def resolved_yaml(cfg: FtConfig) -> str:
    """The full config, defaults included, grouped by section; `load_config` reads it back unchanged."""
    flat = to_flat_dict(cfg)
    parts = []
    for section, keys in SECTION_KEYS.items():
        block = {k: flat[k] for k in keys if k in flat}
        parts.append(f"# {section}\n" + yaml.safe_dump(block, sort_keys=False, allow_unicode=True, width=120))
    return "\n".join(parts)
