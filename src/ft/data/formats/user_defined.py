"""The dict form of `type:` (Axolotl's user-defined format), as the seed configs write it.

A row renders as:  system_format(system) + prompt + output   (+ EOS, added by the tokenizer step)
- system: the row's `field_system` column when present and non-empty, else `system_prompt`; nothing at
  all when both are empty.
- prompt: `format` when the row's input is present and non-empty, else `no_input_format`. Placeholders:
  {instruction}, {input}, {system}. Without `format`: "{instruction}\\n{input}\\n"; without
  `no_input_format`: `format` with {input} rendered as empty text (or "{instruction}\\n" by default).
- output: the `field_output` column, appended right after the prompt with nothing in between. It is the
  trained part when train_on_inputs is false.
Special-token text in a template (such as `</s>`) becomes that token when the tokenizer has it.
"""

from __future__ import annotations

from typing import Any, Mapping

from ft.config.data import UserDefinedFormat
from ft.data.formats.base import FORMATS, Format, Segment, text_field

DEFAULT_FORMAT = "{instruction}\n{input}\n"
DEFAULT_NO_INPUT = "{instruction}\n"


@FORMATS.register("user_defined")
class UserDefined(Format):
    @property
    def spec(self) -> UserDefinedFormat:
        spec = self.ds.type
        assert isinstance(spec, UserDefinedFormat)
        return spec

    def required_columns(self) -> tuple[str, ...]:
        return (self.spec.field_instruction, self.spec.field_output)

    def prompt(self, row: Mapping[str, Any]) -> str:
        s = self.spec
        system = text_field(row, s.field_system, optional=True, key="field_system") if s.field_system else ""
        system = system or s.system_prompt
        instruction = text_field(row, s.field_instruction, key="field_instruction")
        extra = text_field(row, s.field_input, optional=True, key="field_input") if s.field_input else ""
        if extra.strip():
            template = s.format or DEFAULT_FORMAT
        elif s.no_input_format is not None:
            template = s.no_input_format
        else:
            template = s.format or DEFAULT_NO_INPUT
        head = s.system_format.format(system=system) if system else ""
        return head + template.format(instruction=instruction, input=extra, system=system)

    def prompt_for(self, text: str, extra: str = "") -> str:
        row = {self.spec.field_instruction: text}
        if self.spec.field_input:
            row[self.spec.field_input] = extra
        return self.prompt(row)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(self.prompt(row), False), Segment(text_field(row, self.spec.field_output, key="field_output"), True)]
