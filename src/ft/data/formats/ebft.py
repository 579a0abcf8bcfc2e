"""Axolotl's dataset transforms for energy-based fine-tuning (`rl: ebft`), as formats: a prompt (not trained)
and the answer the samples are scored against (trained), or a text trained whole.

- `ebft_opencode.transform`: {input, output} → the chat template's rendering of one user turn with `input`
  and the generation prompt, then `output` as written (no end-of-turn: the samples' stop tokens are not
  scored either).
- `ebft_strided_structured.transform`: {input|prompt|question, output|completion|answer} → the prompt, then the
  answer (BOS and EOS as plain text rows get them); strided EBFT places its anchors in the answer.
- `ebft_pretrain.transform`: {question|text} → the text, trained whole (split at sequence_len).
Any other format works with `rl: ebft` too: the prompt is what comes before a row's first trained token.
"""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field
from ft.data.formats.chat import ChatTemplate
from ft.errors import DataError


def _first(row: Mapping[str, Any], columns: tuple[str, ...]) -> str:
    for column in columns:
        if row.get(column) is not None:
            return text_field(row, column)
    raise DataError(f"missing column: one of {', '.join(f'`{c}`' for c in columns)}")


@FORMATS.register("ebft_opencode.transform", aliases=("ebft_opencode",))
class EbftOpenCode(ChatTemplate):
    reads = ("chat_template", "chat_template_jinja")

    def required_columns(self) -> tuple[str, ...]:
        return ("input", "output")

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        prompt = self.render([{"role": "user", "content": text_field(row, "input")}], generation_prompt=True)
        return [Segment(prompt, False), Segment(text_field(row, "output"), True)]

    def prompt(self, row: Mapping[str, Any]) -> str:
        return self.segments(row)[0].text


PROMPTS, ANSWERS = ("input", "prompt", "question"), ("output", "completion", "answer")


@FORMATS.register("ebft_strided_structured.transform", aliases=("ebft_strided_structured",))
class EbftStructured(Format):
    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(_first(row, PROMPTS), False), Segment(_first(row, ANSWERS), True)]


@FORMATS.register("ebft_pretrain.transform", aliases=("ebft_pretrain",))
class EbftPretrain(Format):
    split_long = True

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(_first(row, ("question", "text")), True)]

    def prompt(self, row: Mapping[str, Any]) -> str:
        return _first(row, ("question", "text"))
