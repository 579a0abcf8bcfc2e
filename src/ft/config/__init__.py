"""Config: one YAML file → one frozen, validated `FtConfig` (see load.py for the flat-key routing)."""

from ft.config.load import load_config, parse_value, to_flat_dict
from ft.config.schema import FtConfig

__all__ = ["FtConfig", "load_config", "parse_value", "to_flat_dict"]
