"""What a prompt format is: a row in, segments with train flags out. Formats never build labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ft.errors import DataError
from ft.registry import Registry

if TYPE_CHECKING:
    from ft.config.data import DatasetConfig


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered text and whether the loss is taken on it (when train_on_inputs is false)."""

    text: str
    train: bool


class Format:
    """A prompt format. Subclasses register under their YAML name in FORMATS.

    `segments(row)` renders a whole training example; `prompt(row)` renders what comes before the
    output, for inference, with exactly the same text the model was trained on.
    """

    #: True when the tokenizer step appends EOS after the last segment (chat templates end turns themselves).
    append_eos: ClassVar[bool] = True
    #: True when texts longer than sequence_len are split into chunks rather than dropped (raw text).
    split_long: ClassVar[bool] = False
    #: The format-specific keys of a `datasets:` entry this format reads; config rejects the others.
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ds: "DatasetConfig", tokenizer: Any = None) -> None:
        self.ds = ds
        self.tokenizer = tokenizer

    def required_columns(self) -> tuple[str, ...]:
        return ()

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        raise NotImplementedError

    def prompt(self, row: Mapping[str, Any]) -> str:
        return "".join(s.text for s in self.segments(row) if not s.train)

    def prompt_for(self, text: str, extra: str = "") -> str:
        """The prompt a user's text (and optional input) becomes at inference: the training format up to
        the output."""
        return text + (f"\n{extra}" if extra else "")


FORMATS: Registry[type[Format]] = Registry("dataset type")


def text_field(row: Mapping[str, Any], column: str, *, optional: bool = False, key: str = "") -> str:
    """The text in `row[column]`; a missing or non-text value is a DataError (the caller adds the row).

    `key` is the config key that named the column, so the message can point at it.
    """
    value = row.get(column)
    if value is None:
        if optional:
            return ""
        raise DataError(f"missing column `{column}`" + (f" (named by `{key}`)" if key else ""))
    if not isinstance(value, str):
        raise DataError(f"column `{column}` holds {type(value).__name__}, not text")
    return value
