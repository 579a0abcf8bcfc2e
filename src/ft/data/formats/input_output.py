"""`type: input_output`: rows that spell out their own segments: {"segments": [{"text": ..., "label": true}]}.

`label: true` segments are trained; the others are context. No template, no EOS added (write it in the
last segment if the model should learn to stop).
"""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment
from ft.errors import DataError


@FORMATS.register("input_output")
class InputOutput(Format):
    append_eos = False

    def required_columns(self) -> tuple[str, ...]:
        return ("segments",)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        out = []
        for i, seg in enumerate(row.get("segments") or []):
            if not isinstance(seg, Mapping) or not isinstance(seg.get("text"), str):
                raise DataError(f"segments[{i}] must be an object with a `text` string and a `label` flag")
            out.append(Segment(seg["text"], bool(seg.get("label", False))))
        if not out:
            raise DataError("`segments` is empty")
        return out
