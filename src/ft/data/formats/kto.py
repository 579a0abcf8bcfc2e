"""KTO rows (`rl: kto`): a prompt, one answer and whether it is desirable (`label`: true/false), TRL's unpaired
preference format. A row becomes a pair of texts in the prepared data: the prompt with its own answer, and the
prompt with the answer of the row before it in the file (the first row takes the last row's): the mismatched
text KTO estimates its KL term from, as TRL's KTOTrainer shifts the answers of each batch by one.

- `type: llama3.ultra` (Axolotl's KTO strategy for argilla's UltraFeedback KTO rows): `prompt` (and `system`)
  written with Llama 3's headers as text, each answer followed by `<|eot_id|>`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ft.data.formats.base import FORMATS, Segment, text_field
from ft.data.formats.preference import PairFormat
from ft.errors import DataError

MISMATCHED = "ft_kto_mismatched"  # the answer of the row before, put into each row by `mismatched`


class KtoFormat(PairFormat):
    kto: ClassVar[bool] = True

    def required_columns(self) -> tuple[str, ...]:
        return ("prompt", "completion", "label")

    def answer(self, text: str) -> str:
        return text

    def mismatched(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows, each with the answer of the row before it (cyclically) for its KL text."""
        return [{**row, MISMATCHED: rows[i - 1].get("completion")} for i, row in enumerate(rows)]

    def desirable(self, row: Mapping[str, Any]) -> int:
        label = row.get("label")
        if not isinstance(label, bool):
            raise DataError("`label` must be true (a desirable answer) or false (an undesirable one)")
        return int(label)

    def pair(self, row: Mapping[str, Any]) -> tuple[list[Segment], list[Segment]]:
        if "chosen" in row and "completion" not in row:
            raise DataError("these are preference pairs (chosen, rejected); `rl: kto` reads rows of a prompt, a "
                            "`completion` and a `label`")
        prompt = self.prompt(row)
        answer = text_field(row, "completion")
        if not answer.strip():
            raise DataError("the answer (`completion`) is empty")
        other = row.get(MISMATCHED)
        other = answer if not isinstance(other, str) or not other.strip() else other
        return ([Segment(prompt, False), Segment(self.answer(answer), True)],
                [Segment(prompt, False), Segment(self.answer(other), True)])


@FORMATS.register("llama3.ultra")
class Llama3Ultra(KtoFormat):
    def prompt(self, row: Mapping[str, Any]) -> str:
        system = row.get("system")
        head = f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if isinstance(system, str) and system else ""
        return (head + f"<|start_header_id|>user<|end_header_id|>\n\n{text_field(row, 'prompt')}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")

    def answer(self, text: str) -> str:
        return text + "<|eot_id|>"
