"""What validation is given by the parts above config: the names a YAML file may use, and file checks.

config is a leaf: it imports none of the parts that own the prompt formats (data/), the chat templates
(tokenizer/), the optimizers and schedulers (train/) or the DeepSpeed file check (launch/). Their tables
reach the validators as pydantic's validation context, collected by `ft.commands.config`. A section
validated without one (a test building a section by hand) checks no names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

from pydantic import ValidationInfo


class NameTable(Protocol):
    """A registry of names (ft.registry.Registry is one): the canonical name, or ValueError listing the valid ones."""

    def canonical(self, name: str) -> str: ...


@dataclass(frozen=True)
class ValidationContext:
    formats: NameTable
    format_reads: Mapping[str, tuple[str, ...]]  # canonical format name → the dataset keys it reads
    chat_templates: NameTable
    optimizers: NameTable
    schedulers: NameTable
    check_deepspeed: Callable[[Any], None]  # a path or an inline mapping; ValueError when it is wrong
    metrics: Optional[NameTable] = None
    pair_formats: frozenset[str] = frozenset()  # formats whose rows are preference pairs (chosen, rejected)
    kto_formats: frozenset[str] = frozenset()  # pair formats of KTO rows (a prompt, an answer, its label)
    adapters: Optional[NameTable] = None  # the parameter-efficient methods (ft.model.methods)
    # a method's name → what it refuses of a whole config: (key, sentence) or None
    adapter_rules: Mapping[str, Callable[[Any], Optional[tuple[str, str]]]] = field(default_factory=dict)


def context_of(info: ValidationInfo) -> Optional[ValidationContext]:
    return info.context if isinstance(info.context, ValidationContext) else None


def canonical(info: ValidationInfo, table: str, name: str) -> str:
    """`name` resolved in the context's table `table` (aliases too); unchanged without a context."""
    context = context_of(info)
    names = getattr(context, table) if context else None
    return names.canonical(name) if names is not None else name
