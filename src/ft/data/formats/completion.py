"""`type: completion`: raw text, all of it trained; texts longer than sequence_len are split into chunks."""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field


@FORMATS.register("completion", aliases=("pretrain",))
class Completion(Format):
    split_long = True
    reads = ("field",)

    @property
    def column(self) -> str:
        return self.ds.field or "text"

    def required_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(text_field(row, self.column), True)]

    def prompt(self, row: Mapping[str, Any]) -> str:
        return text_field(row, self.column)
