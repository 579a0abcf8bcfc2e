"""`type: stepwise_supervised` (TRL's stepwise-supervision rows, Axolotl's type): a prompt, its reasoning steps
(`completions`) and a label per step (`labels`: true/false or a class), for a process reward model.

The text is BOS (when the tokenizer has one), the prompt, then each step followed by `step_separator`; the
step's label (a class id, not a token) sits on its last token (the separator's), every other position is
ignored. Each piece is tokenized by itself, as TRL and Axolotl do, so a step's label lands on a token of its own.
"""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field
from ft.data.labels import IGNORE
from ft.errors import DataError


@FORMATS.register("stepwise_supervised")
class StepwiseSupervised(Format):
    reads = ("step_separator", "max_completion_length", "train_on_last_step_only")
    #: rows become token ids and class labels here (class_labels), not segments of trained text
    steps: bool = True

    def required_columns(self) -> tuple[str, ...]:
        return ("prompt", "completions", "labels")

    def _steps(self, row: Mapping[str, Any]) -> tuple[str, list[str], list[int]]:
        prompt, steps, labels = text_field(row, "prompt"), row.get("completions"), row.get("labels")
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps) or not steps:
            raise DataError("`completions` must be a non-empty list of step texts")
        if not isinstance(labels, list) or len(labels) != len(steps):
            raise DataError(f"`labels` must be a list of {len(steps)} labels, one per step")
        if not all(isinstance(v, (bool, int)) for v in labels):
            raise DataError("each of `labels` must be true/false or a class number")
        return prompt, steps, [int(v) for v in labels]

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:  # the text, for inference and counting
        prompt, steps, _ = self._steps(row)
        sep = self.separator
        return [Segment(prompt, False)] + [Segment(s + sep, True) for s in steps]

    @property
    def separator(self) -> str:
        return "\n" if self.ds.step_separator is None else self.ds.step_separator

    def class_labels(self, row: Mapping[str, Any], encode: Any, bos: Any) -> tuple[list[int], list[int]]:
        """(input ids, labels): a class on each step's last token, IGNORE elsewhere."""
        prompt, steps, classes = self._steps(row)
        if self.ds.train_on_last_step_only:
            classes = [IGNORE] * (len(classes) - 1) + classes[-1:]
        sep = encode(self.separator)
        ids, labels = [], []
        for step, label in zip(steps, classes):
            piece = encode(step) + sep
            if not piece:
                raise DataError("a step and its separator are empty text")
            ids += piece
            labels += [IGNORE] * (len(piece) - 1) + [label]
        if self.ds.max_completion_length:
            ids, labels = ids[: self.ds.max_completion_length], labels[: self.ds.max_completion_length]
        head = ([bos] if bos is not None else []) + encode(prompt)
        return head + ids, [IGNORE] * len(head) + labels
