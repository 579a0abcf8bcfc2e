"""`type: alpaca`: the Stanford Alpaca template, with and without input (seed 004)."""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@FORMATS.register("alpaca")
class Alpaca(Format):
    def required_columns(self) -> tuple[str, ...]:
        return ("instruction", "output")

    def prompt(self, row: Mapping[str, Any]) -> str:
        instruction = text_field(row, "instruction")
        extra = text_field(row, "input", optional=True)
        if extra.strip():
            return WITH_INPUT.format(instruction=instruction, input=extra)
        return NO_INPUT.format(instruction=instruction)

    def prompt_for(self, text: str, extra: str = "") -> str:
        return self.prompt({"instruction": text, "input": extra})

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(self.prompt(row), False), Segment(text_field(row, "output"), True)]
