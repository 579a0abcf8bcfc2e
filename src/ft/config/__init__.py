"""Config: one YAML file → one frozen, validated `FtConfig` (see load.py for the flat-key routing)."""

from ft.config.context import ValidationContext
from ft.config.dump import resolved_yaml, to_flat_dict
from ft.config.load import load_config, parse_value
from ft.config.schema import FtConfig

__all__ = ["FtConfig", "ValidationContext", "load_config", "parse_value", "resolved_yaml", "to_flat_dict"]
