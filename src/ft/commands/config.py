"""Loading a config as every command does: validated against the registries of the parts that own them.

None of these imports torch, so `ft validate` stays fast; config/ itself imports none of them (see
config/context.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Sequence

from ft.config import FtConfig, ValidationContext, load_config
from ft.data.formats import FORMATS
from ft.evaluate.metrics import METRICS
from ft.launch.deepspeed import check_deepspeed
from ft.model.methods import METHODS
from ft.tokenizer.chat_templates import CHAT_TEMPLATES
from ft.train.optimizers import OPTIMIZERS
from ft.train.schedulers import SCHEDULERS


def validation_context() -> ValidationContext:
    return ValidationContext(
        formats=FORMATS,
        format_reads={name: FORMATS.get(name).reads for name in FORMATS.names()},
        pair_formats=frozenset(name for name in FORMATS.names() if getattr(FORMATS.get(name), "pairs", False)),
        kto_formats=frozenset(name for name in FORMATS.names() if getattr(FORMATS.get(name), "kto", False)),
        chat_templates=CHAT_TEMPLATES,
        optimizers=OPTIMIZERS,
        schedulers=SCHEDULERS,
        check_deepspeed=check_deepspeed,
        metrics=METRICS,
        adapters=METHODS,
        adapter_rules={name: partial(METHODS.get(name).refusal, name) for name in METHODS.names()},
    )


def load(path: str | Path, overrides: Sequence[tuple[str, Any]] = ()) -> FtConfig:
    """The validated config of `path` with command-line `overrides` applied."""
    return load_config(path, overrides, context=validation_context())
